"""python -m train {fit,finetune,eval} — see --help of each command."""

import argparse
import json
import sys

from host.cli import dataset_options, run_cli

from .presets import PRESETS


def _common(p, with_out=True):
    from host.datasets import DATASETS

    p.add_argument("--dataset", default="synthetic", choices=DATASETS, help="dataset name (default: synthetic)")
    p.add_argument("--data-dir", help="dataset root in its official on-disk layout (not needed for synthetic)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. flowers_split=official or n_train_per_class=100 (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    if with_out:
        p.add_argument("--out", required=True, help="run directory to write (checkpoint.pt, run.json, ...)")


def _training(p):
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-3 Adam for binary, 0.05 SGD for fp)")
    p.add_argument("--weight-decay", type=float, help="L2 (default: 0 binary, 5e-4 fp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="decoded-image cache directory (recommended for JPEG datasets)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m train", description="Train binary AlexNets (Brevitas).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    fit = sub.add_parser("fit", help="train a network from scratch")
    fit.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    fit.add_argument("--precision", default="binary", choices=("binary", "fp"),
                     help="binary network (default) or its floating-point twin (the paper's baseline)")
    fit.add_argument("--head", default="binary", choices=("binary", "float"),
                     help="type of the last layer (binary: paper variant a, float: variant b)")
    _common(fit)
    _training(fit)

    ft = sub.add_parser("finetune", help="freeze everything before the cut point and retrain the rest")
    ft.add_argument("--from", dest="init_from", required=True, help="pretrained run directory")
    ft.add_argument("--head", default="float", choices=("binary", "float"),
                    help="last layer: float (paper variant b, default) or binary (variant a)")
    ft.add_argument("--cut", default="fc3", choices=("fc1", "fc2", "fc3"),
                    help="first layer trained in software (default fc3: only the last layer, as in the paper)")
    _common(ft)
    _training(ft)

    ev = sub.add_parser("eval", help="print top-1/top-5 of a run on a dataset's test split as one JSON line")
    ev.add_argument("--run", required=True, help="run directory")
    _common(ev, with_out=False)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    opts = dataset_options(args.option)
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
        workers=args.workers, device=args.device, amp=not args.no_amp, cache_dir=args.cache_dir,
        resume=args.resume,
    )
    if args.cmd == "fit":
        cfg = FitConfig(preset=args.preset, precision=args.precision, head=args.head, **common)
        row = run(cfg, "fit")
    else:
        preset = load_checkpoint(args.init_from)["model_config"]["preset"]
        cfg = FitConfig(preset=preset, head=args.head, cut=args.cut, init_from=args.init_from, **common)
        row = run(cfg, "finetune")
    print(json.dumps({"out": args.out, "epoch": row["epoch"], "test_top1": row["test_top1"],
                      "test_top5": row["test_top5"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
