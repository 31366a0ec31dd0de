"""The folding search: the highest throughput whose FINN estimate fits the board within FINN's margins."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .config import BuildConfig
from .estimates import check_fit, pct
from .finn_flow import refold, run_flow

# Coarse target-fps ladder for the default search; between the last fitting point f and the first
# one over the margins (2f) three more points are tried (BRAM use is not monotonic in fps).
COARSE_FPS = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)

REFINE_STEPS = (1.25, 1.5, 1.75)


def search_max_fps(onnx: str, finn_dir: str, cfg: BuildConfig, layer_names: Optional[Sequence[str]] = None,
                   log: Callable[[str], None] = lambda s: None,
                   coarse: Sequence[int] = COARSE_FPS) -> Tuple[Dict, List[Dict]]:
    """Highest target fps whose estimate fits FINN's margins; the FINN dir ends at that folding.

    Walks the ``coarse`` targets (doubling from 250 img/s) until an estimate leaves the margins (or the
    achieved fps stops growing: fully parallel), tries three points between the last fit and that one,
    and refolds at the winner unless it was the last one tried (with HW codegen if asked). Where weights
    stream from DDR the walk stops at the first target whose estimate reaches the DDR bound, and adds
    the target just above that bound: the same throughput in the fewest resources. Points are ranked
    by the lower of FINN's estimate and the DDR bound. Returns (its estimates, one row per point).
    When nothing fits the margins, the smallest folding is kept: the fit check then decides.
    """

    def estimate(fps, first=False):
        c = replace(cfg, target_fps=fps, folding=None, hw_codegen=False)
        est = run_flow(onnx, finn_dir, c, layer_names) if first else refold(finn_dir, c, layer_names)
        rows.append(sweep_row(fps, est))
        last[:] = [est]
        log("build_fpga:   target %6d img/s -> %8.0f img/s, LUT %s, BRAM18 %s%s" % (
            fps, est["fps"], pct(est["lut"]), pct(est["bram18"]), "" if rows[-1]["fits_margins"] else "  (over)"))
        return est

    rows: List[Dict] = []
    last: List[Dict] = []  # the estimate the FINN dir holds now
    last_fit, first_over, prev_fps = None, None, None
    for i, fps in enumerate(coarse):
        est = estimate(fps, first=i == 0)
        if check_fit(est):
            first_over = fps
            break
        last_fit = fps
        if prev_fps is not None and est["fps"] <= prev_fps:
            break  # no more parallelism to add
        ddr_fps = est["ddr"]["fps"]
        if ddr_fps is not None and est["fps"] >= ddr_fps:
            # Weights stream from DDR and it is the bottleneck now: more parallelism buys nothing. The
            # smallest folding that still keeps up with DDR has the same throughput in fewer resources.
            if int(ddr_fps) + 1 < fps:
                estimate(int(ddr_fps) + 1)
            break
        prev_fps = est["fps"]
    if last_fit is None:
        # Even the lowest target leaves the margins: fall back to FINN's minimal folding (target 1 img/s).
        est = estimate(1)
    elif first_over is not None:
        for k in REFINE_STEPS:
            estimate(int(round(last_fit * k)))
    best = pick_best(rows)
    best["chosen"] = True
    if best is rows[-1] and not cfg.hw_codegen:
        est = last[0]  # the FINN dir is at that folding already (a refold of the paper preset takes minutes)
    else:
        est = refold(finn_dir, replace(cfg, target_fps=best["target_fps"], folding=None), layer_names)
    est["target_fps"] = best["target_fps"]
    return est, rows


def pick_best(rows: List[Dict]) -> Dict:
    """The sweep row to build: the highest throughput (the lower of FINN's estimate and the DDR bound)
    within the margins, the smaller target on a tie; the slowest row when none fits.

    Rows at the DDR bound rank equal, at the lowest of their bounds: those differ only by the padding
    of the output words, which depends on the folding.
    """
    fitting = [r for r in rows if r["fits_margins"]]
    if not fitting:
        return min(rows, key=lambda r: r["fps"])
    at_ddr = [r for r in fitting if r["ddr_fps"] is not None and r["fps"] >= r["ddr_fps"]]
    floor = min((r["fps_effective"] for r in at_ddr), default=None)
    return max(fitting, key=lambda r: (floor if r in at_ddr else r["fps_effective"], -r["target_fps"]))


def sweep_row(target_fps: int, est: Dict) -> Dict:
    ddr_fps = est["ddr"]["fps"]
    effective = float(est["fps"]) if ddr_fps is None else min(float(est["fps"]), ddr_fps)
    row = {"target_fps": int(target_fps), "fps": round(float(est["fps"]), 1), "bottleneck": est["bottleneck"],
           "ddr_fps": None if ddr_fps is None else round(ddr_fps, 1), "fps_effective": round(effective, 1),
           "fits_margins": not check_fit(est), "fits_board": not check_fit(est, margins=False), "chosen": False}
    for r in ("lut", "bram18", "uram", "dsp"):
        row[r] = est[r]["used"]
        row[r + "_pct"] = round(100.0 * est[r]["used"] / est[r]["available"], 1) if est[r]["available"] else None
    return row
