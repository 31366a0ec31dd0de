"""python -m demo: train, export, build_fpga and host on synthetic data, ending with a Table-2-shaped table."""

import sys

from host.cli import ArgumentParser, run_cli

from .pipeline import DemoConfig


def build_parser():
    ap = ArgumentParser(
        prog="python -m demo",
        description="Trains the small binary backbone on synthetic+strokes, exports and verifies it, builds the "
                    "FINN accelerator bundle (estimates + emulator without Vivado), trains software heads (a) binary "
                    "and (b) float on synthetic-transfer and (b) on real digit scans on the host, compares with "
                    "training from scratch and prints a "
                    "table shaped like the paper's Table 2 on stdout (progress on stderr). Finished stages are "
                    "skipped on a second run.")
    ap.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    ap.add_argument("--board", default="pynq-z2", help="board of the deploy bundle (default pynq-z2)")
    ap.add_argument("--pretrain-epochs", type=int, default=DemoConfig.pretrain_epochs)
    ap.add_argument("--scratch-epochs", type=int, default=DemoConfig.scratch_epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small datasets: a smoke test of the flow (tests use it)")
    return ap


def main(argv=None):
    from .pipeline import format_table, run_demo

    args = build_parser().parse_args(argv)
    summary = run_demo(DemoConfig(out=args.out, board=args.board, pretrain_epochs=args.pretrain_epochs,
                                  scratch_epochs=args.scratch_epochs, seed=args.seed, workers=args.workers,
                                  quick=args.quick))
    print(format_table(summary))
    return 0



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
