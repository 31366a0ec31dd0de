"""python -m host {fit,eval,predict,live,teach,bench}: the software last layer on the board (see --help of each).

Every command reads a deploy bundle (``build_fpga``'s DEPLOY_DIR), checks its hashes and, on a
PYNQ board, that it was built for this board ($BOARD). Results go to stdout as JSON; progress bars,
warnings and errors go to stderr. Bad input ends with one line "error: ..." and exit code 2.
"""

import argparse
import json
import os
import sys
import time

from .cli import dataset_options, run_cli
from .errors import BnnError, ImageError

BACKEND_NAMES = ("pynq", "emulator", "onnx")
HEAD_VARIANTS = ("float", "binary", "mlp")


# ------------------------------------------------------------------------------------------- arguments

def _bundle_args(parser):
    p = parser.add_argument_group("bundle")
    p.add_argument("--bundle", required=True, metavar="DEPLOY_DIR",
                   help="deploy bundle written by 'python -m build_fpga' (the folder holding manifest.json)")
    p.add_argument("--board", default=os.environ.get("BOARD"),
                   help="refuse a bundle built for another board (default: $BOARD, which PYNQ images set; "
                        "'' skips the check)")


def _backend_args(parser):
    p = parser.add_argument_group("feature extraction")
    p.add_argument("--backend", choices=BACKEND_NAMES,
                   help="where features are computed: pynq (the FPGA), emulator (bit-exact numpy) or onnx "
                        "(QONNX reference, slow); default: the fastest available here")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per backend call (default: the backend's own, 32 for pynq, 64 for the emulator)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="pynq only: seconds one batch may take before the accelerator counts as hung "
                        "(default: 10 + 0.1 per image)")


def _dataset_args(parser, what):
    from .datasets import DATASETS

    p = parser.add_argument_group("dataset")
    p.add_argument("--dataset", required=True, choices=DATASETS, metavar="NAME",
                   help="dataset to %s, its %s split: %s"
                        % (what, "train" if what == "train on" else "test", ", ".join(DATASETS)))
    p.add_argument("--data-dir", metavar="DIR", help="dataset root in its official layout (not for synthetic*)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, repeatable: n_train_per_class=30, flowers_split=official, ...")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="feature cache folder (default: features-cache/ next to the head file)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image decoding threads (default: up to 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _source_args(parser):
    p = parser.add_argument_group("frames").add_mutually_exclusive_group()
    p.add_argument("--camera", type=int, default=0, metavar="N", help="OpenCV index of the USB camera (default 0)")
    p.add_argument("--folder", metavar="DIR",
                   help="the image files under DIR instead of a camera (live: all of them, round and round; "
                        "teach: DIR/<class>/)")


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m host",
        description="Train, evaluate and run the software last layer on the binary features of a deploy bundle.",
        epilog="Typical use on the board: 'fit' a head on a labelled dataset, 'eval' it on the test split, "
               "'predict' new images. Run '<command> --help' for the options of each command.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True  # Python 3.6 compatible spelling of add_subparsers(required=True)

    fit = sub.add_parser(
        "fit", help="extract features of a dataset's train split and train a head on them",
        description="Extract the binary features of the train split (cached on disk as packed bits), train the "
                    "software last layer on them (float: L-BFGS with the L2 chosen on a held-out part, then refitted "
                    "on all rows; binary, mlp: minibatch Adam with early stopping on it), and write the head file. "
                    "Prints one JSON line with the summary.")
    _bundle_args(fit)
    _dataset_args(fit, "train on")
    _backend_args(fit)
    tr = fit.add_argument_group("head training")
    tr.add_argument("--head", default="float", choices=HEAD_VARIANTS,
                     help="float: softmax regression (paper variant b, default); binary: +-1 weights (variant a); "
                          "mlp: two software layers")
    tr.add_argument("--out", required=True, metavar="HEAD.npz", help="head file to write")
    tr.add_argument("--solver", choices=("lbfgs", "adam"),
                    help="lbfgs: full batch (float head only, its default); adam: minibatches (binary and mlp)")
    tr.add_argument("--weight-decay", type=float, default=None, metavar="X",
                    help="L2 penalty, for features scaled by 1/sqrt(width) (default: lbfgs chooses it on the "
                         "held-out rows from 1e-1 .. 1e-7; adam uses 1e-4)")
    tr.add_argument("--max-iter", type=int, default=40, metavar="N",
                    help="L-BFGS iterations per L2 value and for the final fit (default 40)")
    tr.add_argument("--epochs", type=int, default=60, metavar="N",
                    help="adam: maximum epochs (default 60; early stopping ends sooner)")
    tr.add_argument("--lr", type=float, default=1e-2, metavar="X", help="adam: step size (default 0.01)")
    tr.add_argument("--train-batch-size", type=int, default=None, metavar="N",
                     help="minibatch size of the head's training (default: n/8 clipped to 32..512)")
    tr.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                     help="fraction of each class held out to choose the L2 (lbfgs) or the epoch (adam) (default 0.1)")
    tr.add_argument("--patience", type=int, default=2, metavar="N",
                    help="adam: epochs, lbfgs: L2 values without improvement before stopping (default 2)")
    tr.add_argument("--hidden", type=int, default=256, metavar="N", help="hidden units of the mlp head (default 256)")
    tr.add_argument("--refit", action="store_true", default=None,
                    help="retrain the chosen head on all rows, held-out ones included (default for lbfgs, "
                         "warm-started; for adam it retrains from scratch for the best number of epochs)")
    tr.add_argument("--no-refit", action="store_false", dest="refit", help="keep the head fitted without the "
                    "held-out rows (default for adam)")
    tr.add_argument("--no-calibrate", action="store_true",
                     help="skip temperature scaling of the probabilities on the held-out rows")
    tr.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split, initialisation and shuffling")

    ev = sub.add_parser(
        "eval", help="top-1/top-5 of a head on a dataset's test split, and a confusion-matrix PNG",
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
        "predict", help="top-5 classes of image files",
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
                    "stage (capture, preprocess, features, pack, head). Stops after --frames frames or on Ctrl-C.")
    _bundle_args(lv)
    lv.add_argument("--head", required=True, metavar="HEAD.npz", help="head file written by 'fit', 'teach' or "
                                                                      "teach.ipynb")
    _source_args(lv)
    lv.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N frames (default: run "
                                                                           "until Ctrl-C)")
    lv.add_argument("--top", type=int, default=3, metavar="K", help="classes per frame (default 3)")
    lv.add_argument("--table", action="store_true", help="one readable line per frame instead of JSON")
    _backend_args(lv)

    te = sub.add_parser(
        "teach", help="capture examples of new classes from a camera (or folders), train a head, save it",
        description="For each --class, capture --frames frames from the camera (after Enter on the terminal) or take "
                    "them from DIR/<class>/ with --folder; the features are extracted as frames arrive, the head is "
                    "trained on them and written to --out. Each captured frame is kept in --examples "
                    "(<class>/<n>.png), and examples already there are used again. Prints one JSON line.")
    _bundle_args(te)
    te.add_argument("--out", required=True, metavar="HEAD.npz", help="head file to write")
    te.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                    help="a class to teach, repeatable (at least two in all, counting those in --examples)")
    te.add_argument("--frames", type=int, default=10, metavar="K", help="frames to capture per class (default 10)")
    te.add_argument("--examples", metavar="DIR", help="folder keeping the captured frames (default: HEAD-examples/ "
                                                      "next to --out)")
    te.add_argument("--head", default="float", choices=HEAD_VARIANTS, help="head variant (default float)")
    _source_args(te)
    _backend_args(te)

    be = sub.add_parser(
        "bench", help="speed of the backends, of packing and of head training on this machine",
        description="Measure images/s of every available backend at several batch sizes (random images of the "
                    "bundle's input shape), pack/unpack throughput of the accelerator's streams, and head training "
                    "time on generated Flowers-size features (6,149 x feature width, 102 classes), and the live loop's "
                    "milliseconds per stage on 640x480 frames. Prints JSON.")
    _bundle_args(be)
    be.add_argument("--batch-sizes", default="1,8,64", metavar="LIST", help="comma-separated (default 1,8,64)")
    be.add_argument("--backends", metavar="LIST",
                    help="comma-separated subset of %s (default: every available one)" % ",".join(BACKEND_NAMES))
    be.add_argument("--quick", action="store_true", help="a few seconds in all: small workloads, float head only")
    be.add_argument("--seconds", type=float, default=None, metavar="X",
                    help="minimum duration of each timing (default 2, 0.2 with --quick)")
    be.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="pynq only: seconds one batch may take before the accelerator counts as hung")
    return ap


# ------------------------------------------------------------------------------------------- helpers

def _positive(name, value):
    if value is not None and value < 1:
        raise BnnError("%s: must be a positive integer, got %d" % (name, value))
    return value


def _load_bundle(args):
    from .bundle import load_bundle

    board = (args.board or "").strip() or None
    return load_bundle(args.bundle, board=board)


def _backend_choice(args, bundle):
    """(name, options) of the backend to use."""
    from .backends import available_backends

    name = args.backend or available_backends(bundle)[0]
    opts = {}
    if name == "pynq" and args.timeout is not None:
        if not args.timeout > 0:
            raise BnnError("--timeout: must be a positive number of seconds, got %r" % args.timeout)
        # one deadline per batch, whatever its size: what a user asking for N seconds expects
        opts = {"timeout_s": args.timeout, "timeout_per_image_s": 0.0}
    return name, opts


def _cache_dir(args, head_path):
    if args.no_cache:
        return None
    if args.cache_dir:
        return os.path.abspath(os.path.expanduser(args.cache_dir))
    return os.path.join(os.path.dirname(os.path.abspath(head_path)), "features-cache")


def _open_dataset(args, split):
    from .datasets import open_dataset

    return open_dataset(args.dataset, split, args.data_dir, **dataset_options(args.option))


def _extract(args, bundle, dataset, head_path):
    """(backend name, DatasetFeatures) of ``dataset`` with the command's backend and cache options."""
    from .extract import extract_dataset

    _positive("--batch-size", args.batch_size)
    _positive("--workers", args.workers)
    name, opts = _backend_choice(args, bundle)
    feats = extract_dataset(bundle, name, dataset, batch_size=args.batch_size, cache_dir=_cache_dir(args, head_path),
                            progress=not args.quiet, workers=args.workers, backend_options=opts)
    return name, feats


def _load_head(args, bundle):
    from .bundle import check_head_compatible
    from .heads import load_head

    head = load_head(args.head)
    check_head_compatible(bundle, head.meta, args.head)
    return head


def _r(x, digits=4):
    return None if x is None else round(float(x), digits)


def _print_json(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


# ------------------------------------------------------------------------------------------- commands

def cmd_fit(args):
    from .benchmark import peak_rss_mb
    from .heads import HeadConfig, fit_head, save_head

    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise BnnError("%s: is a directory; --out takes the head file to write, e.g. %s"
                       % (out, os.path.join(out, "head.npz")))
    _positive("--train-batch-size", args.train_batch_size)
    for flag, value in (("--epochs", args.epochs), ("--patience", args.patience), ("--hidden", args.hidden),
                        ("--max-iter", args.max_iter)):
        _positive(flag, value)
    # checked here, not only in fit_head: a typo should not cost a whole feature extraction first
    wd_ok = args.weight_decay is None or args.weight_decay >= 0
    if not args.lr > 0 or not wd_ok or not 0 <= args.val_fraction < 1:
        raise BnnError("--lr must be > 0, --weight-decay >= 0 and --val-fraction in [0, 1), got %r, %r, %r"
                       % (args.lr, args.weight_decay, args.val_fraction))
    if args.solver == "lbfgs" and args.head != "float":
        raise BnnError("--solver lbfgs: fits the float head only; the %s head trains with adam" % args.head)
    cfg = HeadConfig(variant=args.head, solver=args.solver, weight_decay=args.weight_decay, max_iter=args.max_iter,
                     epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr,
                     val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, hidden=args.hidden,
                     refit=args.refit, calibrate=not args.no_calibrate)
    bundle = _load_bundle(args)
    dataset = _open_dataset(args, "train")
    backend, feats = _extract(args, bundle, dataset, out)
    t_train = time.perf_counter()
    meta = bundle.head_meta()
    meta.update(
        bundle={"root": bundle.root, "digest": bundle.digest, "board": bundle.board, "preset": bundle.preset},
        dataset=dataset.describe(),
        features={"backend": feats.backend or backend, "images": len(feats), "skipped": len(feats.skipped),
                  "cache": feats.cache_path},
    )
    if list(dataset.class_names) != list(dataset.classes):
        meta["class_names"] = list(dataset.class_names)
    head, _ = fit_head(feats.packed, feats.labels, dataset.classes, cfg, progress=not args.quiet,
                       feature_width=feats.width, meta=meta)
    train_seconds = time.perf_counter() - t_train
    save_head(out, head)
    info = head.meta["train"]
    if info["l2"]["chosen_by"] == "fallback":
        print("warning: %s: %s; used L2=%g (recorded in the head file)" % (out, info["l2"]["reason"],
                                                                        info["l2"]["value"]), file=sys.stderr)
    _print_json({
        "command": "fit", "head": out, "variant": head.variant, "backend": backend, "dataset": dataset.name,
        "classes": head.num_classes, "feature_width": head.feature_width,
        "train_images": len(feats), "skipped": len(feats.skipped), "n_train": info["n_train"], "n_val": info["n_val"],
        "val_top1": _r(info.get("val_top1")), "solver": info["solver"], "l2": info["l2"]["value"],
        "l2_chosen_by": info["l2"]["chosen_by"], "best_epoch": info.get("best_epoch"),
        "epochs_run": info.get("epochs_run"),
        "cached": feats.cached, "cache": feats.cache_path, "extract_seconds": _r(feats.seconds, 3),
        "images_per_s": _r(feats.images_per_s, 1), "train_seconds": _r(train_seconds, 3),
        "seconds": _r(time.perf_counter() - t0, 3), "peak_rss_mb": peak_rss_mb(),
    })
    return 0


def _confusion_path(args):
    if args.confusion:
        return os.path.abspath(args.confusion)
    stem = os.path.abspath(args.head)
    if stem.endswith(".npz"):
        stem = stem[:-4]
    return stem + ".confusion.png"


def _check_classes(head, dataset, head_path):
    if list(head.classes) == list(dataset.classes):
        return
    if len(head.classes) != len(dataset.classes):
        raise BnnError("%s: head knows %d classes but the %s test split has %d"
                       % (head_path, head.num_classes, dataset.name, len(dataset.classes)))
    k = next(i for i, (a, b) in enumerate(zip(head.classes, dataset.classes)) if a != b)
    raise BnnError("%s: head's class %d is %r but the %s dataset's is %r (trained on another dataset?)"
                   % (head_path, k, head.classes[k], dataset.name, dataset.classes[k]))


def cmd_eval(args):
    from .heads import evaluate
    from .report import save_confusion_png

    t0 = time.perf_counter()
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    png = _confusion_path(args)
    dataset = _open_dataset(args, "test")
    _check_classes(head, dataset, args.head)  # before the (long) extraction
    backend, feats = _extract(args, bundle, dataset, args.head)
    res = evaluate(head, feats.packed, feats.labels, confusion=True)
    names = head.meta.get("class_names") or head.classes
    save_confusion_png(png, res["confusion"], names, title="%s on %s/test" % (os.path.basename(args.head),
                                                                             dataset.name))
    _print_json({
        "command": "eval", "head": os.path.abspath(args.head), "variant": head.variant, "backend": backend,
        "dataset": dataset.name, "classes": head.num_classes, "top1": _r(res["top1"]), "top5": _r(res["top5"]),
        "images": res["n"], "skipped": len(feats.skipped), "cached": feats.cached, "cache": feats.cache_path,
        "images_per_s": _r(feats.images_per_s, 1), "extract_seconds": _r(feats.seconds, 3),
        "confusion": png, "seconds": _r(time.perf_counter() - t0, 3),
    })
    return 0


def _prepared(paths, pp):
    """(path, image or None) per path, with a warning for each unreadable one."""
    from .preprocess import decode_image, eval_transform

    for path in paths:
        try:
            yield path, eval_transform(decode_image(path), pp)
        except ImageError as e:
            print("warning: %s" % e, file=sys.stderr, flush=True)
            yield path, None


def _print_table(path, names, probs):
    print(path)
    for rank, (name, p) in enumerate(zip(names, probs), 1):
        print("  %d  %-40s %6.2f%%" % (rank, name, 100.0 * p))


def cmd_predict(args):
    import numpy as np

    from .backends import make_backend
    from .heads import predict_topk
    from .preprocess import Preprocess

    _positive("--top", args.top)
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    names = head.meta.get("class_names") or head.classes
    pp = Preprocess.from_dict(bundle.preprocess)
    name, opts = _backend_choice(args, bundle)
    _positive("--batch-size", args.batch_size)
    failed = 0
    with make_backend(name, bundle, **opts) as backend:
        bs = args.batch_size or backend.default_batch_size
        stream = _prepared(args.images, pp)
        while True:
            chunk = [item for _, item in zip(range(bs), stream)]
            if not chunk:
                break
            good = [(p, img) for p, img in chunk if img is not None]
            failed += len(chunk) - len(good)
            if not good:
                continue
            feats = backend.extract(np.stack([img for _, img in good]), batch_size=bs)
            idx, prob = predict_topk(head, feats, k=args.top)
            for (path, _), i_row, p_row in zip(good, idx, prob):
                if args.table:
                    _print_table(path, [names[i] for i in i_row], p_row)
                else:
                    top = [{"class": head.classes[i], "prob": round(float(p), 6)} for i, p in zip(i_row, p_row)]
                    if "class_names" in head.meta:
                        for t, i in zip(top, i_row):
                            t["name"] = names[i]
                    _print_json({"image": path, "top": top})
    return 1 if failed else 0


def _open_source(args):
    from .live import open_source

    if args.folder is not None:
        source, _ = open_source(camera=None, folder=args.folder)
        return source
    source, _ = open_source(camera=args.camera)
    return source


def _top_entries(head, names, i_row, p_row):
    top = [{"class": head.classes[i], "prob": round(float(p), 6)} for i, p in zip(i_row, p_row)]
    if "class_names" in head.meta:
        for t, i in zip(top, i_row):
            t["name"] = names[i]
    return top


def _stage_ms(timer):
    return {k: round(v, 3) for k, v in timer.ms().items()}


def cmd_live(args):
    from .backends import make_backend
    from .live import STAGES, LivePipeline, StageTimer

    _positive("--top", args.top)
    _positive("--frames", args.frames)
    bundle = _load_bundle(args)
    head = _load_head(args, bundle)
    names = head.meta.get("class_names") or head.classes
    name, opts = _backend_choice(args, bundle)
    total = StageTimer(window=10 ** 6)  # the whole run, for the summary; the pipeline's own is the last 30 frames
    frames = skipped = failed_in_a_row = 0
    with _open_source(args) as source, make_backend(name, bundle, **opts) as backend:
        print("live: %s, %s backend, head %s (%d classes)" % (source.name, name, args.head, head.num_classes),
              file=sys.stderr, flush=True)
        pipe = LivePipeline(bundle, backend)
        try:
            while args.frames is None or frames < args.frames:
                try:
                    res = pipe.step(source, head, k=args.top)
                except ImageError as e:
                    skipped += 1
                    failed_in_a_row += 1
                    print("warning: %s" % e, file=sys.stderr, flush=True)
                    if failed_in_a_row >= source.max_failures:
                        raise BnnError("%s (%d frames in a row)" % (e, failed_in_a_row)) from None
                    continue
                failed_in_a_row = 0
                frames += 1
                total.add(res.seconds)
                fps = pipe.timer.fps()
                if args.table:
                    print("%6d  %s  %s" % (frames, "  ".join("%-16s %5.1f%%" % (names[i][:16], 100 * p)
                                                              for i, p in zip(res.top, res.prob)),
                                           "%.1f frames/s" % fps if fps else ""), flush=True)
                else:
                    _print_json({"frame": frames, "top": _top_entries(head, names, res.top, res.prob),
                                 "fps": _r(fps, 2)})
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a live run; the summary still comes
    host_fps = total.host_fps()
    _print_json({"command": "live", "frames": frames, "skipped": skipped, "backend": name, "source": source.name,
                 "fps": _r(total.fps(), 2), "host_fps": _r(host_fps, 1), "ms": _stage_ms(total),
                 "stages": list(STAGES)})
    return 1 if skipped else 0


def _prompt(text):
    """Wait for Enter on an interactive terminal; go on at once when stdin is not one (scripts, tests)."""
    print(text, file=sys.stderr, flush=True)
    if sys.stdin is not None and sys.stdin.isatty():
        sys.stdin.readline()


def cmd_teach(args):
    from .backends import make_backend
    from .live import CameraSource, Teacher, check_class_name

    _positive("--frames", args.frames)
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise BnnError("%s: is a directory; --out takes the head file to write" % out)
    classes = [check_class_name(c) for c in args.classes]
    examples = args.examples or (out[:-4] if out.endswith(".npz") else out) + "-examples"
    bundle = _load_bundle(args)
    name, opts = _backend_choice(args, bundle)
    with _open_source(args) as source, make_backend(name, bundle, **opts) as backend:
        teacher = Teacher(bundle, backend, source, examples_dir=examples, variant=args.head)
        if teacher.resumed:
            print("teach: %d examples of %s from %s" % (teacher.resumed, ", ".join(teacher.store.classes), examples),
                  file=sys.stderr, flush=True)
        for c in classes:
            if isinstance(source, CameraSource):
                _prompt("teach: show '%s' to %s and press Enter" % (c, source.name))
            print("teach: " + teacher.capture(c, args.frames), file=sys.stderr, flush=True)
        head = teacher.train()
    teacher.save_head(out)
    info = head.meta["train"]
    _print_json({"command": "teach", "head": out, "examples_dir": teacher.store.folder, "backend": name,
                 "source": source.name, "classes": head.classes, "examples": teacher.store.counts(),
                 "resumed": teacher.resumed, "variant": head.variant, "val_top1": _r(info.get("val_top1")),
                 "train_seconds": _r(teacher.train_seconds, 3)})
    return 0


def _name_list(text, what, choices=None):
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BnnError("%s: expected a comma-separated list, got %r" % (what, text))
    if choices is not None:
        bad = [s for s in items if s not in choices]
        if bad:
            raise BnnError("%s: unknown %s (choose from %s)" % (what, ", ".join(bad), ", ".join(choices)))
    return items


def cmd_bench(args):
    from .benchmark import BenchConfig, run_bench

    try:
        sizes = [int(s) for s in _name_list(args.batch_sizes, "--batch-sizes")]
    except ValueError:
        raise BnnError("--batch-sizes: expected positive integers like 1,8,64, got %r" % args.batch_sizes) from None
    backends = _name_list(args.backends, "--backends", BACKEND_NAMES) if args.backends else None
    opts = {}
    if args.timeout is not None:
        if not args.timeout > 0:
            raise BnnError("--timeout: must be a positive number of seconds, got %r" % args.timeout)
        opts = {"timeout_s": args.timeout, "timeout_per_image_s": 0.0}
    if args.seconds is not None and not args.seconds > 0:
        raise BnnError("--seconds: must be positive, got %r" % args.seconds)
    cfg = BenchConfig(batch_sizes=sizes, backends=backends, quick=args.quick, min_seconds=args.seconds,
                      backend_options=opts)
    bundle = _load_bundle(args)
    result = run_bench(bundle, cfg, progress=lambda msg: print("bench: " + msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


COMMANDS = {"fit": cmd_fit, "eval": cmd_eval, "predict": cmd_predict, "live": cmd_live, "teach": cmd_teach,
            "bench": cmd_bench}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.cmd](args)



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
