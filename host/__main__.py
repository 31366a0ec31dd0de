"""python -m host {fit,eval,predict,live,teach,bench}: the software last layer on the board (see --help of each).

Every command reads a deploy bundle (``build_fpga``'s DEPLOY_DIR), checks its hashes and, on a
PYNQ board, that it was built for this board (``host.boards``), where it runs the FPGA unless
``--backend`` names another backend. Results go to stdout as JSON, each naming the backend that
ran; progress bars, warnings and errors go to stderr. Bad input ends with one line "error: ..." and
exit code 2.

This module defines the command line; ``commands.py`` does what each command does.
"""

import sys

from .backends import BACKENDS, add_backend_options
from .cli import ArgumentParser, command_name, run_cli
from .commands import COMMANDS
from .heads import VARIANTS
from .heads.fit import SOLVER_OPTIONS

# Old spellings of renamed options, per command (issue 27): each is refused with a line naming the new one
RENAMED = {
    "fit": {"--head": "--head-type", "--cache-dir": "--feature-cache", "--batch-size": "--extract-batch-size",
            "--train-batch-size": "--solver-option batch_size=N", "--no-calibrate": "--solver-option calibrate=no",
            "--refit": "--solver-option refit=yes", "--no-refit": "--solver-option refit=no",
            **{"--" + k.replace("_", "-"): "--solver-option %s=..." % k
               for k in ("solver", "weight_decay", "path_iter", "max_iter", "epochs", "lr", "val_fraction", "patience",
                         "hidden")}},
    "eval": {"--cache-dir": "--feature-cache", "--batch-size": "--extract-batch-size"},
    "predict": {"--batch-size": "--extract-batch-size"},
    "teach": {"--head": "--head-type", "--frames": "--frames-per-class"},
}

# ------------------------------------------------------------------------------------------- arguments

def _bundle_args(parser):
    p = parser.add_argument_group("bundle")
    p.add_argument("--bundle", required=True, metavar="DEPLOY_DIR",
                   help="deploy bundle written by 'python -m build_fpga' (the folder holding manifest.json)")
    p.add_argument("--board", default=None,
                   help="refuse a bundle built for another board, named as PYNQ does (Pynq-Z2, ...) or as "
                        "build_fpga does (pynq-z2, ...) (default: the PYNQ board this runs on, from $BOARD or the "
                        "device tree; '' skips the check)")


def _backend_args(parser, batched=True):
    """``batched``: the command extracts features of many images (live and teach: one frame at a time)."""
    p = parser.add_argument_group("feature extraction")
    p.add_argument("--backend", choices=tuple(BACKENDS),
                   help="where features are computed: %s; default: %s on a PYNQ board (an error where it cannot "
                        "run there), elsewhere the fastest available"
                        % (", ".join("%s (%s)" % (n, s.summary) for n, s in BACKENDS.items()),
                           " or ".join(n for n, s in BACKENDS.items() if s.on_board)))
    if batched:
        p.add_argument("--extract-batch-size", type=int, default=None, metavar="N",
                       help="images per backend call of the feature extraction (default: the backend's own, 32 for "
                            "pynq, 64 for the emulator)")
    add_backend_options(p)


def _dataset_args(parser, what):
    from .datasets import DATASETS

    p = parser.add_argument_group("dataset")
    p.add_argument("--dataset", required=True, choices=tuple(DATASETS), metavar="NAME",
                   help="dataset to %s, its %s split: %s"
                        % (what, "train" if what == "train on" else "test", ", ".join(DATASETS)))
    p.add_argument("--data-dir", metavar="DIR",
                   help="dataset root in its official layout (default: none, for the generated synthetic* datasets)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, repeatable: n_train_per_class=30, flowers_split=official, ...")
    p.add_argument("--feature-cache", metavar="DIR",
                   help="feature cache folder (default: features-cache/ next to the head file)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image decoding threads (default: up to 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _source_args(parser):
    p = parser.add_argument_group("frames").add_mutually_exclusive_group()
    p.add_argument("--camera", type=int, default=0, metavar="N", help="OpenCV index of the USB camera")
    p.add_argument("--folder", metavar="DIR",
                   help="the image files under DIR instead of a camera (live: all of them, round and round; "
                        "teach: DIR/<class>/; default: none, the camera)")


def build_parser():
    ap = ArgumentParser(
        prog=command_name("host"),
        description="Train, evaluate and run the software last layer on the binary features of a deploy bundle.",
        epilog="Typical use on the board: 'fit' a head on a labelled dataset, 'eval' it on the test split, "
               "'predict' new images. Run '<command> --help' for the options of each command.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True  # Python 3.6 compatible spelling of add_subparsers(required=True)

    fit = sub.add_parser(
        "fit", renamed=RENAMED["fit"], help="extract features of a dataset's train split and train a head on them",
        description="Extract the binary features of the train split (cached on disk as packed bits), train the "
                    "software last layer on them (float: L-BFGS with the L2 chosen on a held-out part, then refitted "
                    "on all rows; binary, mlp: minibatch Adam with early stopping on it), and write the head file. "
                    "Prints one JSON line with the summary.")
    _bundle_args(fit)
    _dataset_args(fit, "train on")
    _backend_args(fit)
    tr = fit.add_argument_group("head training")
    tr.add_argument("--head-type", default="float", choices=VARIANTS,
                    help="type of the last layer: float: softmax regression (paper variant b); binary: +-1 weights "
                         "(variant a); mlp: two software layers")
    tr.add_argument("--out", required=True, metavar="HEAD.npz", help="head file to write")
    tr.add_argument("--solver-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a knob of the head's training, repeatable; the defaults suit nearly every task: %s "
                         "(HeadConfig in host/heads/fit.py documents each)" % ", ".join(SOLVER_OPTIONS))
    tr.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split, initialisation and shuffling")

    ev = sub.add_parser(
        "eval", renamed=RENAMED["eval"],
        help="top-1/top-5 of a head on a dataset's test split, and a confusion-matrix PNG",
        description="Extract the test split's features (cached), check that the head fits the bundle, and print "
                    "one JSON line with top1, top5, the number of images and the extraction speed (images_per_s; "
                    "null when the features came from the cache: use --no-cache to measure it). Writes the "
                    "confusion matrix as a PNG.")
    _bundle_args(ev)
    ev.add_argument("--head", required=True, metavar="HEAD.npz", help="head file written by 'fit'")
    _dataset_args(ev, "evaluate on")
    _backend_args(ev)
    ev.add_argument("--confusion", metavar="PNG",
                    help="confusion-matrix picture to write (default: HEAD.confusion.png next to the head)")

    pr = sub.add_parser(
        "predict", renamed=RENAMED["predict"], help="top-5 classes of image files",
        description="Classify image files: one JSON line per image with its top classes and probabilities, or a "
                    "table with --table. An unreadable image gives a warning and exit code 1; the others are "
                    "still classified.")
    _bundle_args(pr)
    pr.add_argument("--head", required=True, metavar="HEAD.npz", help="head file written by 'fit'")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--top", type=int, default=5, metavar="K", help="classes per image (default 5)")
    pr.add_argument("--table", action="store_true", help="print a readable table instead of JSON lines")
    _backend_args(pr)

    lv = sub.add_parser(
        "live", help="classify camera frames (or a folder's images) continuously: top classes and frames/s",
        description="Read frames from a USB camera (OpenCV) or, with --folder or when there is no camera, from the "
                    "image files of a folder; print the top classes of each frame with the loop's frames/s, one JSON "
                    "line per frame (a table with --table), and a last JSON line with the mean milliseconds of each "
                    "stage (capture, preprocess, features, pack, head). Stops after --frames frames in all or on "
                    "Ctrl-C.")
    _bundle_args(lv)
    lv.add_argument("--head", required=True, metavar="HEAD.npz", help="head file written by 'fit', 'teach' or "
                                                                      "teach.ipynb")
    _source_args(lv)
    lv.add_argument("--frames", type=int, default=None, metavar="N",
                    help="stop after N frames in all (default: run until Ctrl-C)")
    lv.add_argument("--top", type=int, default=3, metavar="K", help="classes per frame (default 3)")
    lv.add_argument("--table", action="store_true", help="one readable line per frame instead of JSON")
    _backend_args(lv, batched=False)

    te = sub.add_parser(
        "teach", renamed=RENAMED["teach"],
        help="capture examples of new classes from a camera (or folders), train a head, save it",
        description="For each --class, capture --frames-per-class frames from the camera (after Enter on the terminal) "
                    "or take them from DIR/<class>/ with --folder; the features are extracted as frames arrive, the "
                    "head is trained on them and written to --out. Each captured frame is kept in --examples "
                    "(<class>/<n>.png), and examples already there are used again. Prints one JSON line.")
    _bundle_args(te)
    te.add_argument("--out", required=True, metavar="HEAD.npz", help="head file to write")
    te.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                    help="a class to teach, repeatable (at least two in all, counting those in --examples)")
    te.add_argument("--frames-per-class", type=int, default=10, metavar="K", help="frames to capture per class")
    te.add_argument("--examples", metavar="DIR", help="folder keeping the captured frames (default: HEAD-examples/ "
                                                      "next to --out)")
    te.add_argument("--head-type", default="float", choices=VARIANTS,
                    help="type of the last layer: float (paper variant b), binary (variant a) or mlp")
    _source_args(te)
    _backend_args(te, batched=False)

    be = sub.add_parser(
        "bench", help="speed of the backends, of packing and of head training on this machine",
        description="Measure images/s of every available backend at several batch sizes (random images of the "
                    "bundle's input shape), pack/unpack throughput of the accelerator's streams, and head training "
                    "time on generated Flowers-size features (6,149 x feature width, 102 classes), and the live loop's "
                    "milliseconds per stage on 640x480 frames. Prints JSON.")
    _bundle_args(be)
    be.add_argument("--batch-sizes", default="1,8,64", metavar="LIST", help="comma-separated (default 1,8,64)")
    be.add_argument("--backends", metavar="LIST",
                    help="comma-separated subset of %s (default: every available one)" % ",".join(BACKENDS))
    be.add_argument("--quick", action="store_true", help="a few seconds in all: small workloads, float head only")
    be.add_argument("--seconds", type=float, default=None, metavar="X",
                    help="minimum duration of each timing (default 2, 0.2 with --quick)")
    add_backend_options(be)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.cmd](args)



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
