"""python -m demo: train, export, build_fpga and host on generated data, ending with a Table-2-shaped table."""

import sys

from bnn_transfer.host.cli import ArgumentParser, command_name, run_cli

from .pipeline import DemoConfig


def build_parser():
    ap = ArgumentParser(
        prog=command_name("demo"),
        description="Trains the small binary backbone on synthetic+strokes, exports and verifies it, builds the "
                    "FINN accelerator bundle (estimates + emulator without Vivado), and on the host trains software "
                    "heads (a) binary and (b) float on three transfer tasks with 10, 30 and 80 training images per "
                    "class (the label regimes of Flowers102, CUB-200 and MIT Indoor 67) and on real digit scans, "
                    "against the same network trained from scratch on each task. Prints a table shaped like the "
                    "paper's Table 2 on stdout (progress on stderr) and writes table.md, summary.json and "
                    "learning_curve.png into --out. Finished stages are skipped on a second run.")
    ap.add_argument("--out", default="runs/demo", metavar="DIR", help="folder to write everything into")
    ap.add_argument("--board", default="pynq-z2", help="board of the deploy bundle (default pynq-z2)")
    ap.add_argument("--pretrain-epochs", type=int, default=DemoConfig.pretrain_epochs,
                    help="epochs of the backbone's pretraining (default %d)" % DemoConfig.pretrain_epochs)
    ap.add_argument("--scratch-epochs", type=int, default=DemoConfig.scratch_epochs,
                    help="most epochs of a from-scratch baseline; its budget is chosen on held-out training images "
                         "(default %d)" % DemoConfig.scratch_epochs)
    ap.add_argument("--curve", action="store_true",
                    help="the full learning curve, up to 160 training images per class (longer: more scratch "
                         "training); by default it stops at 80")
    ap.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    ap.add_argument("--workers", type=int, default=DemoConfig.workers,
                    help="image decoding workers (DataLoader worker processes) of the training stages (default %d)"
                         % DemoConfig.workers)
    ap.add_argument("--threads", type=int, default=DemoConfig.threads,
                    help="torch threads of a training stage that runs alone (default %d). Results are bit-identical "
                         "only for the same --threads and --jobs" % DemoConfig.threads)
    ap.add_argument("--jobs", type=int, default=DemoConfig.jobs,
                    help="training and host stages run side by side, one thread each (default %d; 1: one at a "
                         "time)" % DemoConfig.jobs)
    ap.add_argument("--quick", action="store_true", help="small datasets: a smoke test of the flow (tests use it)")
    return ap


def main(argv=None):
    from bnn_transfer.host.errors import BnnError

    from .pipeline import run_demo
    from .report import format_table

    args = build_parser().parse_args(argv)
    for flag, value in (("--pretrain-epochs", args.pretrain_epochs), ("--scratch-epochs", args.scratch_epochs),
                        ("--threads", args.threads), ("--jobs", args.jobs)):
        if value < 1:
            raise BnnError("%s %d: must be >= 1" % (flag, value))
    if args.workers < 0:
        raise BnnError("--workers %d: must be >= 0" % args.workers)
    summary = run_demo(DemoConfig(out=args.out, board=args.board, pretrain_epochs=args.pretrain_epochs,
                                  scratch_epochs=args.scratch_epochs, seed=args.seed, workers=args.workers,
                                  threads=args.threads, jobs=args.jobs, curve=args.curve, quick=args.quick))
    print(format_table(summary))
    return 0


def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
