"""FINN's estimates for each preset's accelerator: the highest target fps that fits the board.

``build_fpga.folding.search_max_fps`` (the search ``python -m build_fpga`` uses) runs the estimate flow
once and refolds for each target it tries; the fitting estimate with the highest fps is reported with
its LUT and BRAM18 use. These are FINN's analytical estimates at the
board's clock (no synthesis, no FIFOs or width converters). Next to them the usual reference point:
finn-examples' CNV-W1A1 (a binary VGG-like CIFAR-10 net) runs about 3,000 images/s on a Pynq-Z1, as
published by the finn-examples project; that is a literature anchor, not measured here.
"""

import os
import time

from .measure import skipped

ANCHOR = {"anchor": "finn-examples CNV-W1A1 on Pynq-Z1 (published, not measured here)", "anchor_fps": 3000}
PLAN = (  # preset, board, coarse target fps of the search (full run), in --quick (None: not run)
    ("tiny", "pynq-z2", None, (1000, 10000, 20000)),
    ("z2", "pynq-z2", None, None),
    ("paper", "zcu104", (50, 100, 200, 400, 800), None),
)
PAPER_REASON = ("the paper preset's FINN flow takes ~20 min and 13.5 GB (streamlining alone ~17 min, "
                "build_fpga/FINN_NOTES.md); run with --with-paper-finn")


def _row(name, preset, board, best, tried, wall_s):
    best = best if any(r["fits_margins"] for r in tried) else None
    rec = {"name": name, "kind": "estimate", "ours_s": None, "theirs_s": None, "speedup": None, "identical": None,
           "target": None, "met": None, "preset": preset, "board": board,
           "candidates": [int(t["target_fps"]) for t in tried], "search_wall_s": round(wall_s, 1)}
    if best is None:
        rec.update(fps=None, lut=None, bram18=None, note="no candidate fits the board with FINN's margins")
    else:
        rec.update(fps=round(best["fps"]), target_fps=best["target_fps"], lut=best["lut"]["used"],
                   lut_usable=best["lut"]["usable"], bram18=best["bram18"]["used"],
                   bram18_usable=best["bram18"]["usable"], dsp=best["dsp"]["used"], bottleneck=best["bottleneck"],
                   clock_mhz=best["clock_mhz"])
    rec.update(ANCHOR)
    return rec


def run(ctx):
    for preset, board, full, quick in PLAN:
        name = "finn_estimate/%s/%s" % (preset, board)
        if not ctx.wanted(name):
            continue
        if ctx.quick and quick is None:
            yield skipped(name, "--quick estimates the tiny preset only")
            continue
        if preset == "paper" and not ctx.with_paper_finn:
            yield skipped(name, PAPER_REASON)
            continue
        from build_fpga.config import BuildConfig
        from build_fpga.folding import COARSE_FPS, search_max_fps

        coarse = (quick if ctx.quick else full) or COARSE_FPS
        ctx.log("finn: %s, coarse targets %s (a few seconds per target)" % (name, coarse))
        net = ctx.networks.get(preset)
        out = os.path.join(ctx.workdir, "finn_%s_%s" % (preset, board))
        t0 = time.time()
        best, tried = search_max_fps(net.qonnx_path(), out, BuildConfig(board=board), coarse=coarse)
        yield _row(name, preset, board, best, tried, time.time() - t0)
