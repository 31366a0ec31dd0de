"""python -m export {backbone,head} — see --help of each command."""

import json
import sys

from bnn_transfer.host.cli import ArgumentParser, command_name, run_cli


def build_parser():
    ap = ArgumentParser(prog=command_name("export"), description="Export the frozen binary backbone and the head.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    bb = sub.add_parser(
        "backbone", help="frozen part -> QONNX (uint8 in, +-1 features out), verified bit-exact",
        description="Fold the frozen layers of a training run (everything before the cut) to integers, export "
                    "them as a QONNX graph (backbone.onnx: uint8 images in, +-1 features out) and check it bit for "
                    "bit against the torch integer backbone on test images; writes backbone.onnx and export.json "
                    "into --out and prints one JSON line.")
    bb.add_argument("--run", required=True, metavar="RUN_DIR", help="training run directory (python -m train "
                                                                    "fit|finetune)")
    bb.add_argument("--out", required=True, metavar="EXPORT_DIR",
                    help="export directory to write (backbone.onnx, export.json)")
    bb.add_argument("--cut", help="first layer left to software (default: the run's, fc3 = the paper's)")
    bb.add_argument("--preset", metavar="NAME", help="refuse a run of any other preset (default: any)")
    bb.add_argument("--verify-dataset", default="synthetic", metavar="NAME", help="test images to verify with")
    bb.add_argument("--verify-data-dir", metavar="DIR", help="root of --verify-dataset when it is on disk "
                                                             "(default: none, for synthetic)")
    bb.add_argument("--verify-images", type=int, default=64, metavar="N",
                    help="test images on which qonnx's execution of backbone.onnx must equal the torch integer "
                         "backbone bit for bit (default 64; build_fpga's --verify-images defaults to 4: its ladder "
                         "runs each image through FINN's python execution of two graphs, which is slower)")

    hd = sub.add_parser(
        "head", help="the layers after the cut point as a numpy .npz for host/",
        description="Write the trained layers after the cut of a fine-tuned run as a head file for host/ "
                    "(python -m host eval|predict|live --head HEAD.npz); prints one JSON line.")
    hd.add_argument("--run", required=True, metavar="RUN_DIR",
                    help="fine-tuned run directory (python -m train finetune)")
    hd.add_argument("--out", required=True, metavar="HEAD.npz", help="head file to write")
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
