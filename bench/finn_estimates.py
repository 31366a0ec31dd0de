"""FINN's estimates for each preset's accelerator: the most img/s whose estimate fits the board.

``build_fpga.folding.search_max_fps`` (the search ``python -m build_fpga`` uses) runs the estimate flow
at FINN's smallest folding, searches the folding over every resource and refolds FINN with it; the
record carries img/s, LUT, BRAM18 and DSP (layers plus the FIFOs, width converters and DMAs the
hardware build adds) and the resource that binds. These are analytical estimates at the board's clock
(no synthesis). Next to them the usual reference point: finn-examples' CNV-W1A1 (a binary VGG-like
CIFAR-10 net) runs about 3,000 images/s on a Pynq-Z1, as published by the finn-examples project; that
is a literature anchor, not measured here.
"""

import os
import time

from .measure import skipped

ANCHOR = {"anchor": "finn-examples CNV-W1A1 on Pynq-Z1 (published, not measured here)", "anchor_fps": 3000}
PLAN = (  # preset, board, run in --quick
    ("tiny", "pynq-z2", True),
    ("z2", "pynq-z2", False),
    ("paper", "zcu104", False),
)
Z2_TARGET = 3000  # img/s on the Pynq-Z2 at 100 MHz (issue #16)
PAPER_REASON = ("the paper preset's FINN flow takes ~20 min and 13.5 GB (streamlining alone ~17 min, "
                "build_fpga/FINN_NOTES.md); run with --with-paper-finn")


def _row(name, preset, board, est, wall_s):
    from build_fpga.estimates import check_fit

    fits = not check_fit(est)
    rec = {"name": name, "kind": "estimate", "ours_s": None, "theirs_s": None, "speedup": None, "identical": None,
           "target": None, "met": None, "preset": preset, "board": board, "search_wall_s": round(wall_s, 1),
           "clock_mhz": est["clock_mhz"], "binding": est["folding_search"]["binding"],
           "binding_detail": est["folding_search"]["detail"]}
    if not fits:
        rec.update(fps=None, note="even the smallest folding leaves FINN's margins: %s" % "; ".join(check_fit(est)))
    else:
        rec.update(fps=round(est["fps"]), bottleneck=est["bottleneck"])
        for r in ("lut", "bram18", "dsp"):
            rec.update({r: est[r]["used"], r + "_usable": est[r]["usable"],
                        r + "_pct": round(100.0 * est[r]["used"] / est[r]["available"], 1),
                        r + "_interconnect": est[r]["interconnect"]})
    if preset == "z2" and board == "pynq-z2":
        rec.update(target=">= %d img/s within 70%% LUT, 80%% BRAM18, 80%% DSP" % Z2_TARGET,
                   met=bool(fits and est["fps"] >= Z2_TARGET))
    rec.update(ANCHOR)
    return rec


def run(ctx):
    for preset, board, in_quick in PLAN:
        name = "finn_estimate/%s/%s" % (preset, board)
        if not ctx.wanted(name):
            continue
        if ctx.quick and not in_quick:
            yield skipped(name, "--quick estimates the tiny preset only")
            continue
        if preset == "paper" and not ctx.with_paper_finn:
            yield skipped(name, PAPER_REASON)
            continue
        from build_fpga.config import BuildConfig
        from build_fpga.folding import search_max_fps

        ctx.log("finn: %s, folding search (a minute for z2)" % name)
        net = ctx.networks.get(preset)
        out = os.path.join(ctx.workdir, "finn_%s_%s" % (preset, board))
        t0 = time.time()
        est, _ = search_max_fps(net.qonnx_path(), out, BuildConfig(board=board), log=ctx.log)
        yield _row(name, preset, board, est, time.time() - t0)
