"""python -m train {fit,finetune,eval,table2} — see --help of each command."""

import argparse
import json
import os
import sys

from bnn_transfer.host.cli import ArgumentParser, command_name, key_value_options, run_cli
from bnn_transfer.host.errors import BnnError

from .presets import PRESETS

# Old spellings of renamed options, per command (issue 27): each is refused with a line naming the new one
RENAMED = {
    "fit": {"--head": "--head-type", "--cache-dir": "--image-cache"},
    "finetune": {"--head": "--head-type", "--cache-dir": "--image-cache", "--from": "--run"},
    "table2": {"--cache-dir": "--image-cache", "--epochs-pretrain": "--pretrain-epochs",
               "--epochs-scratch": "--scratch-epochs", "--epochs-finetune": "--finetune-epochs"},
}


def _dataset_arg(name):
    from .datasets import dataset_name

    try:
        return dataset_name(name)
    except BnnError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p, with_out=True):
    from .datasets import DATASETS

    p.add_argument("--dataset", default="synthetic", type=_dataset_arg, metavar="NAME",
                   help="dataset: %s, or a union such as synthetic+strokes (default: synthetic)" % ", ".join(DATASETS))
    p.add_argument("--data-dir", metavar="DIR",
                   help="dataset root in its official on-disk layout (default: none, for the generated datasets)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. flowers_split=official or n_train_per_class=100 (repeatable)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="images per torch step: the training minibatch, and the batch of the test-split evaluation")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="image decoding workers (DataLoader worker processes)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, one per core). The exact bits of a CPU run depend "
                        "on it: fix it to reproduce a run on another machine")
    if with_out:
        p.add_argument("--out", required=True, metavar="RUN_DIR",
                       help="run directory to write (checkpoint.pt, run.json, ...)")


def _training(p):
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="training epochs")
    p.add_argument("--lr", type=float, metavar="X",
                   help="learning rate (default: 5e-3 Adam for binary, 0.05 SGD for fp)")
    p.add_argument("--weight-decay", type=float, metavar="X", help="L2 penalty (default: 0 binary, 5e-4 fp)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the initialisation, augmentation and data order")
    p.add_argument("--image-cache", metavar="DIR",
                   help="decoded-image cache folder: each image is decoded once, not every epoch (recommended for "
                        "JPEG datasets; default: none)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--no-flip", action="store_true",
                   help="no random left-right mirroring of training images (writing: a mirrored glyph is another one)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="X",
                   help="hold out this fraction of each class's training images, score them after every epoch "
                        "(the test split only after the last) and report the best epoch as best_epoch: the "
                        "budget to retrain with on all images (default 0: no held-out images)")


def _table2(sub):
    t2 = sub.add_parser(
        "table2", renamed=RENAMED["table2"],
        help="run every row of the paper's Table 2 (resumable) and report it beside the paper's",
        description="Pretrain on ImageNet (fp and binary), then train from scratch and fine-tune on Flowers102, "
                    "CUB-200 and MIT Indoor 67; writes REPORT_DIR/table2.md, table2.json, table2.png and one run "
                    "directory per row under REPORT_DIR/runs/. Rerun the same command to resume.",
    )
    t2.add_argument("--imagenet", metavar="DIR", help="ILSVRC2012: DIR/train/<wnid>/, DIR/val/<wnid>/ (default: none; "
                                                       "needed without --synthetic or two --imagenet-run)")
    t2.add_argument("--flowers", metavar="DIR", help="Flowers102: DIR/jpg/, imagelabels.mat, setid.mat (default: none; "
                                                      "needed without --synthetic)")
    t2.add_argument("--birds", metavar="DIR", help="CUB-200-2011: DIR/images.txt, images/, ... (default: none; needed "
                                                    "without --synthetic)")
    t2.add_argument("--indoor", metavar="DIR", help="MIT Indoor 67: DIR/Images/, TrainImages.txt, TestImages.txt "
                                                     "(default: none; needed without --synthetic)")
    t2.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder of the report and run directories "
                                                                       "to write")
    t2.add_argument("--preset", choices=sorted(PRESETS),
                    help="network preset of every row (default: paper; tiny with --synthetic)")
    t2.add_argument("--imagenet-run", action="append", default=[], metavar="RUN_DIR",
                    help="an already-trained ImageNet run (python -m train fit) that replaces the pretraining of "
                         "its precision; repeat with one fp and one binary run to skip pretraining entirely")
    t2.add_argument("--pretrain-epochs", type=int, metavar="N",
                    help="epochs of the ImageNet pretraining (default 60; 4 with --synthetic)")
    t2.add_argument("--scratch-epochs", type=int, metavar="N",
                    help="epochs of the from-scratch rows (default 100; 4 with --synthetic)")
    t2.add_argument("--finetune-epochs", type=int, metavar="N",
                    help="epochs of the fine-tuned rows (default 30; 3 with --synthetic)")
    t2.add_argument("--synthetic", action="store_true",
                    help="generated stand-ins for all four datasets and the tiny preset: the flow on a CPU")
    t2.add_argument("--synthetic-scale", type=float, default=1.0, metavar="F",
                    help="multiply the stand-ins' images per class (e.g. 0.1 for a smoke test)")
    t2.add_argument("--batch-size", type=int, default=64, metavar="N",
                    help="images per torch step: the training minibatch, and the batch of the test-split evaluation")
    t2.add_argument("--workers", type=int, metavar="N",
                    help="image decoding workers (DataLoader worker processes; default: CPU count - 2, at most 16)")
    t2.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda when available)")
    t2.add_argument("--image-cache", metavar="DIR",
                    help="decoded-image cache folder: each image is decoded once, not every epoch (recommended for "
                         "the JPEG datasets; default: none)")
    t2.add_argument("--seed", type=int, default=0, metavar="N",
                    help="seed of the initialisation, augmentation and data order")
    t2.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")


def build_parser():
    ap = ArgumentParser(prog=command_name("train"), description="Train binary AlexNets (Brevitas).")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    fit = sub.add_parser(
        "fit", renamed=RENAMED["fit"], help="train a network from scratch",
        description="Train a network of a preset on a dataset's train split from scratch (binary: Adam, fp: SGD "
                    "with Nesterov momentum; a cosine schedule), checkpointing as it goes, and score it on the "
                    "test split. Writes checkpoint.pt, run.json, metrics.jsonl and curves.png into --out and "
                    "prints one JSON line.")
    fit.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="network preset of train/presets.py")
    fit.add_argument("--precision", default="binary", choices=("binary", "fp"),
                     help="binary network or its floating-point twin (the paper's baseline)")
    fit.add_argument("--head-type", choices=("binary", "float"),
                     help="type of the last layer (binary: paper variant a, float: variant b; "
                          "default: binary for binary networks, float for fp)")
    _common(fit)
    _training(fit)

    ft = sub.add_parser(
        "finetune", renamed=RENAMED["finetune"], help="freeze everything before the cut point and retrain the rest",
        description="Fold the layers of a pretrained run before --cut into the integer backbone, and train the "
                    "rest on its exact features on a new dataset. Writes a run directory like fit's into --out and "
                    "prints one JSON line.")
    ft.add_argument("--run", required=True, metavar="RUN_DIR",
                    help="pretrained run directory to start from (python -m train fit)")
    ft.add_argument("--head-type", default="float", choices=("binary", "float"),
                    help="type of the last layer: float (paper variant b) or binary (variant a)")
    ft.add_argument("--cut", default="fc3", choices=("fc1", "fc2", "fc3"),
                    help="first layer trained in software (default fc3: only the last layer, as in the paper)")
    _common(ft)
    _training(ft)

    ev = sub.add_parser(
        "eval", help="print top-1/top-5 of a run on a dataset's test split as one JSON line",
        description="Score a run's network on a dataset's test split; prints top1 and top5 as one JSON line.")
    ev.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory to evaluate (python -m train "
                                                                    "fit|finetune)")
    _common(ev, with_out=False)
    _table2(sub)

    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd == "table2":
        from .table2 import main as table2_main

        return table2_main(args)
    opts = key_value_options(args.option)
    if args.threads is not None:
        if args.threads < 1:
            raise BnnError("--threads %d: must be >= 1" % args.threads)
        import torch

        torch.set_num_threads(args.threads)
    if args.cmd == "eval":
        from .fit import evaluate_run

        res = evaluate_run(args.run, args.dataset, args.data_dir, opts, args.batch_size, args.workers, args.device)
        print(json.dumps(res))
        return 0

    from .checkpoint import load_checkpoint
    from .fit import FitConfig, run

    common = dict(
        out=args.out, dataset=args.dataset, data_dir=args.data_dir, dataset_options=opts, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        workers=args.workers, device=args.device, amp=not args.no_amp, cache_dir=args.image_cache,
        flip=not args.no_flip, resume=args.resume, val_fraction=args.val_fraction,
    )
    if args.cmd == "fit":
        head = args.head_type or ("float" if args.precision == "fp" else "binary")
        cfg = FitConfig(preset=args.preset, precision=args.precision, head=head, **common)
        row = run(cfg, "fit")
    else:
        preset = load_checkpoint(args.run)["model_config"]["preset"]
        cfg = FitConfig(preset=preset, head=args.head_type, cut=args.cut, init_from=args.run, **common)
        row = run(cfg, "finetune")
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("epoch", "test_top1", "test_top5", "best_epoch", "best_val_top1")
        print(json.dumps(dict({"out": args.out}, **{k: row[k] for k in keys if k in row})))
    return 0



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
