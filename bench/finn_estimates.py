"""FINN's estimates for each preset's accelerator: the highest target fps that fits the board.

``build_fpga.flow.find_max_fps`` runs the estimate flow once and refolds for every candidate target
(BRAM use is not monotonic in fps, so every candidate is estimated); the fitting estimate with the
highest fps is reported with its LUT and BRAM18 use. These are FINN's analytical estimates at the
board's clock (no synthesis, no FIFOs or width converters). Next to them the usual reference point:
finn-examples' CNV-W1A1 (a binary VGG-like CIFAR-10 net) runs about 3,000 images/s on a Pynq-Z1, as
published by the finn-examples project; that is a literature anchor, not measured here.
"""

import os

from .measure import skipped

ANCHOR = {"anchor": "finn-examples CNV-W1A1 on Pynq-Z1 (published, not measured here)", "anchor_fps": 3000}
PLAN = (  # preset, board, candidate target fps (full run), candidates in --quick
    ("tiny", "pynq-z2", (1000, 5000, 10000, 20000, 30000, 40000), (1000, 10000, 20000)),
    ("z2", "pynq-z2", (500, 1000, 1500, 2000, 2500, 2600, 3000), None),
    ("paper", "zcu104", (50, 100, 200, 400, 800), None),
)
PAPER_REASON = ("the paper preset's FINN flow takes ~20 min and 13.5 GB (streamlining alone ~17 min, "
                "build_fpga/FINN_NOTES.md); run with --with-paper-finn")


def _row(name, preset, board, best, tried):
    rec = {"name": name, "kind": "estimate", "ours_s": None, "theirs_s": None, "speedup": None, "identical": None,
           "target": None, "met": None, "preset": preset, "board": board,
           "candidates": [int(t["target_fps"]) for t in tried], "flow_wall_s": tried[0]["run"]["wall_s"]}
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
        from build_fpga.flow import find_max_fps

        candidates = quick if ctx.quick else full
        ctx.log("finn: %s, candidates %s (a few seconds per candidate)" % (name, candidates))
        net = ctx.networks.get(preset)
        out = os.path.join(ctx.workdir, "finn_%s_%s" % (preset, board))
        best, tried = find_max_fps(net.qonnx_path(), out, board, candidates)
        yield _row(name, preset, board, best, tried)
