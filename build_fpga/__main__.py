"""python -m build_fpga: compile an exported backbone into a FINN accelerator and a deploy bundle.

Progress goes to stderr; stdout gets one line (the result), so scripts can read it. Bad input ends
with one line "error: ..." and exit code 2.
"""

import sys

from bnn_transfer.host.cli import ArgumentParser, RawEpilogHelpFormatter, command_name, run_cli

from .boards import board_names

EPILOG = """\
examples:
  python -m build_fpga --export runs/tiny-export --board pynq-z2 --out deploy/pynq-z2
  python -m build_fpga --export runs/z2-export --board pynq-z2 --out deploy/z2 --target-fps 1000
  python -m build_fpga --export runs/z2-export --board pynq-z2 --out deploy/z2 \\
      --folding deploy/z2/report/folding_config.json        (after editing PE/SIMD in it)

Without Vivado on PATH (or with --estimate-only) the build stops after FINN's estimates: the bundle
then holds the bit-exact numpy emulator, the QONNX graph and the reports, and host/ runs it with
--backend emulator. With Vivado (2022.2 or 2024.2, XILINX_VIVADO set, 'finn deps update' done) the
same command also synthesizes the bitstream for the board's Zynq shell: a pre-flight checks the tools
and FINN's deps first (one "error:" line per missing piece), and a stopped hardware build resumes from
its last finished FINN step when the command is run again (--clean starts over); FINN's log is
<DEPLOY_DIR>.finn-build/hw-<key>/build_dataflow.log.
"""


def build_parser():
    ap = ArgumentParser(
        prog=command_name("build_fpga"),
        description="Build the frozen binary backbone of an export directory into a FINN dataflow accelerator "
                    "for a PYNQ board: FINN's resource and throughput estimates, a fit check against the board, "
                    "a bit-exact emulator, and (with Vivado) the bitstream, all in one deploy bundle.",
        epilog=EPILOG, formatter_class=RawEpilogHelpFormatter)
    ap.add_argument("--export", required=True, metavar="EXPORT_DIR",
                    help="directory written by 'python -m export backbone' (backbone.onnx + export.json)")
    ap.add_argument("--board", required=True, metavar="BOARD",
                    help="target board: %s" % ", ".join(board_names()))
    ap.add_argument("--out", required=True, metavar="DEPLOY_DIR",
                    help="deploy bundle to write (replaced as a whole when the build succeeds)")
    ap.add_argument("--target-fps", type=int, default=None, metavar="N",
                    help="images per second FINN's SetFolding folds the layers for (default: the folding search, "
                         "the most img/s whose layers, FIFOs, width converters and DMAs fit FINN's margins: "
                         "70%% LUT, 80%% BRAM18, 80%% DSP)")
    ap.add_argument("--folding", metavar="FILE",
                    help="FINN folding config JSON to use instead of a target fps, e.g. a bundle's "
                         "report/folding_config.json with PE/SIMD edited (default: none: --target-fps or the "
                         "folding search folds)")
    ap.add_argument("--clock-mhz", type=float, default=None, metavar="MHZ",
                    help="clock FINN folds, estimates and synthesizes for, 10 to 250 (default: the board's: 100 MHz "
                         "on Pynq-Z1/Z2, 150 MHz on Ultra96, ZCU104, KV260, below the 5.0-5.4 ns finn-examples builds "
                         "there; only Vivado's timing report proves a clock)")
    ap.add_argument("--mvau-wwidth-max", type=int, default=36, metavar="BITS",
                    help="FINN's cap on SIMD x weight bits per PE in SetFolding, i.e. with --target-fps "
                         "(default 36, FINN's)")
    ap.add_argument("--estimate-only", action="store_true",
                    help="stop after FINN's estimates even where Vivado is on PATH")
    ap.add_argument("--hw-codegen", action="store_true",
                    help="also generate FINN's HLS C++ and RTL sources (no Vivado needed) and keep FINN's working "
                         "folder next to DEPLOY_DIR (<DEPLOY_DIR>.finn-build) so a Vivado user can resume")
    ap.add_argument("--build-dir", metavar="DIR",
                    help="FINN's working folder (intermediate models, generated code), kept after the build "
                         "(default: a temporary folder next to DEPLOY_DIR, removed afterwards; with --hw-codegen, "
                         "--cppsim or Vivado: <DEPLOY_DIR>.finn-build)")
    ap.add_argument("--fifo", default="force_minimal_fifos", choices=("force_minimal_fifos", "distributed_sim"),
                    help="FINN's FIFO sizing for the hardware build: force_minimal_fifos (default; FINN's shallowest "
                         "FIFOs, no simulation: works on a plain Vivado install; our network is one chain of "
                         "layers, so it cannot deadlock) or distributed_sim (sizes each FIFO by simulating the "
                         "layers: needs FINN's XSI simulator, cmake, g++, OpenMP, Boost; takes long)")
    ap.add_argument("--board-repo", action="append", default=[], metavar="DIR",
                    help="a folder of board files (<board>/<version>/board.xml) to search besides FINN's deps, "
                         "Vivado's board store and your XHUB store; passed on to Vivado's board.repoPaths "
                         "(repeatable)")
    ap.add_argument("--accept-timing-violation", action="store_true",
                    help="bundle the bitstream even when Vivado's routed design misses the clock (default: refuse, "
                         "naming the clock it reaches and the --clock-mhz to retry with)")
    ap.add_argument("--clean", action="store_true",
                    help="start the hardware build over instead of resuming it from its last finished FINN step")
    ap.add_argument("--verify-images", type=int, default=4, metavar="N",
                    help="seeded random images on which FINN's graphs and the emulator must equal the torch "
                         "integer backbone bit for bit (default 4; 0 skips). Fewer than export's 64: FINN's python "
                         "execution of its graphs takes seconds per image for the larger presets, and export has "
                         "already checked the same integer backbone on test images")
    ap.add_argument("--cppsim", type=int, nargs="?", const=8, default=None, metavar="N",
                    help="also compile FINN's generated HLS C++ of every layer with g++ and run N seeded images "
                         "(default 8) through FINN's C++ simulation; each layer must equal the emulator and FINN's "
                         "python execution bit for bit (report/bitexact.json). Needs g++, finn-hlslib in FINN's deps "
                         "folder (FINN_DEPS, 'finn deps update') and Vitis HLS (XILINX_HLS) or --hls-include. "
                         "Compiled layers are cached in the kept FINN working folder")
    ap.add_argument("--hls-include", metavar="DIR",
                    help="for --cppsim without Vitis HLS: a folder with the open ap_types headers (ap_int.h, "
                         "hls_stream.h; include/ of github.com/Xilinx/HLS_arbitrary_Precision_Types; default: "
                         "none, Vitis HLS's)")
    return ap


def main(argv=None):
    from .build import build
    from .config import BuildConfig

    args = build_parser().parse_args(argv)
    if args.cppsim is not None and args.cppsim < 1:
        from bnn_transfer.host.errors import BnnError

        raise BnnError("--cppsim %d: give a positive number of images, or leave --cppsim out" % args.cppsim)
    from .finn_env import launch_like_finn, vivado_requested

    if argv is None and not args.estimate_only and vivado_requested():
        launch_like_finn("build_fpga")  # restarts this process once, before anything is read or written
    cfg = BuildConfig(export=args.export, board=args.board, out=args.out, target_fps=args.target_fps,
                      folding=args.folding, clock_mhz=args.clock_mhz, mvau_wwidth_max=args.mvau_wwidth_max,
                      estimate_only=args.estimate_only, hw_codegen=args.hw_codegen,
                      build_dir=args.build_dir, verify_images=args.verify_images, fifo=args.fifo,
                      clean=args.clean, cppsim=args.cppsim or 0, hls_include=args.hls_include,
                      board_repos=tuple(args.board_repo), accept_timing_violation=args.accept_timing_violation)
    result = build(cfg)
    print(result.message, flush=True)
    return 0



def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
