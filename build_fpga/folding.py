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
    and refolds at the winner (with HW codegen if asked). Returns (its estimates, one row per point).
    When nothing fits the margins, the smallest folding is kept: the fit check then decides.
    """

    def estimate(fps, first=False):
        c = replace(cfg, target_fps=fps, folding=None, hw_codegen=False)
        est = run_flow(onnx, finn_dir, c, layer_names) if first else refold(finn_dir, c, layer_names)
        rows.append(sweep_row(fps, est))
        log("build_fpga:   target %6d img/s -> %8.0f img/s, LUT %s, BRAM18 %s%s" % (
            fps, est["fps"], pct(est["lut"]), pct(est["bram18"]), "" if rows[-1]["fits_margins"] else "  (over)"))
        return est

    rows: List[Dict] = []
    last_fit, first_over, prev_fps = None, None, None
    for i, fps in enumerate(coarse):
        est = estimate(fps, first=i == 0)
        if check_fit(est):
            first_over = fps
            break
        last_fit = fps
        if prev_fps is not None and est["fps"] <= prev_fps:
            break  # no more parallelism to add
        prev_fps = est["fps"]
    if last_fit is None:
        # Even the lowest target leaves the margins: fall back to FINN's minimal folding (target 1 img/s).
        est = estimate(1)
    elif first_over is not None:
        for k in REFINE_STEPS:
            estimate(int(round(last_fit * k)))
    fitting = [r for r in rows if r["fits_margins"]]
    best = max(fitting, key=lambda r: (r["fps"], -r["target_fps"])) if fitting else min(rows, key=lambda r: r["fps"])
    best["chosen"] = True
    est = refold(finn_dir, replace(cfg, target_fps=best["target_fps"], folding=None), layer_names)
    est["target_fps"] = best["target_fps"]
    return est, rows


def sweep_row(target_fps: int, est: Dict) -> Dict:
    row = {"target_fps": int(target_fps), "fps": round(float(est["fps"]), 1), "bottleneck": est["bottleneck"],
           "fits_margins": not check_fit(est), "fits_board": not check_fit(est, margins=False), "chosen": False}
    for r in ("lut", "bram18", "uram", "dsp"):
        row[r] = est[r]["used"]
        row[r + "_pct"] = round(100.0 * est[r]["used"] / est[r]["available"], 1) if est[r]["available"] else None
    return row
