"""python -m export {backbone,head} — see --help of each command."""

import json
import sys

from host.cli import ArgumentParser, run_cli


def build_parser():
    ap = ArgumentParser(prog="python -m export", description="Export the frozen binary backbone and the head.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    bb = sub.add_parser("backbone", help="frozen part -> QONNX (uint8 in, +-1 features out), verified bit-exact")
    bb.add_argument("--run", required=True, help="training run directory (python -m train fit|finetune)")
    bb.add_argument("--out", required=True, help="export directory to write (backbone.onnx, export.json)")
    bb.add_argument("--cut", help="first layer left to software (default: the run's, fc3 = the paper's)")
    bb.add_argument("--preset", help="refuse a run of any other preset")
    bb.add_argument("--verify-dataset", default="synthetic", help="test images to verify with (default: synthetic)")
    bb.add_argument("--verify-data-dir", help="root of --verify-dataset when it is on disk")
    bb.add_argument("--verify-images", type=int, default=64, help="how many images to verify (default 64)")

    hd = sub.add_parser("head", help="the layers after the cut point as a numpy .npz for host/")
    hd.add_argument("--run", required=True, help="fine-tuned run directory (python -m train finetune)")
    hd.add_argument("--out", required=True, help="head file to write (.npz)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd == "backbone":
        from .backbone import ExportConfig, export_backbone

        cfg = ExportConfig(run=args.run, out=args.out, cut=args.cut, preset=args.preset,
                           verify_dataset=args.verify_dataset, verify_data_dir=args.verify_data_dir,
                           verify_images=args.verify_images)
        m = export_backbone(cfg)
        print(json.dumps({"out": args.out, "feature_width": m["feature_width"], "verify": m["verify"]}))
    else:
        from .head import export_head

        head = export_head(args.run, args.out)
        print(json.dumps({"out": args.out, "variant": head.variant, "classes": len(head.classes),
                          "feature_width": head.feature_width}))
    return 0



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
