"""FINN's estimate reports -> our resource dict, and the fit check against a board and its margins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .boards import RESOURCES, Board

_FINN_RES = {"lut": "LUT", "bram18": "BRAM_18K", "uram": "URAM", "dsp": "DSP"}


def parse_estimates(report_dir, board: Board, clock_mhz: float, models_dir=None,
                    layer_names: Optional[Sequence[str]] = None) -> Dict:
    """FINN's estimate reports -> our estimates dict (the keys issue #5 asks for, and per-layer rows).

    FINN's analytical models have no FF estimate: ``ff.used`` is None (only Vivado HLS's reports,
    step_hw_ipgen, give FFs).
    """
    report_dir = Path(report_dir)
    perf = json.loads((report_dir / "estimate_network_performance.json").read_text())
    res = json.loads((report_dir / "estimate_layer_resources.json").read_text())
    cycles = json.loads((report_dir / "estimate_layer_cycles.json").read_text())
    params = json.loads((report_dir / "op_and_param_counts.json").read_text())
    total = res.pop("total")
    attrs = _node_attrs(Path(models_dir) / "step_generate_estimate_reports.onnx") if models_dir else {}
    blocks = _assign_blocks(list(res), attrs, layer_names)
    layers = []
    for name, r in res.items():
        a = attrs.get(name, {})
        p = params.get(name, {})
        layers.append({
            "node": name,
            "op_type": a.get("op_type", name.rsplit("_", 1)[0]),
            "layer": blocks.get(name),
            "cycles": int(cycles.get(name, 0)),
            "lut": int(round(r.get("LUT", 0))),
            "bram18": int(round(r.get("BRAM_18K", 0))),
            "uram": int(round(r.get("URAM", 0))),
            "dsp": int(round(r.get("DSP", 0))),
            "bram_efficiency": r.get("BRAM_efficiency"),
            "pe": a.get("PE"),
            "simd": a.get("SIMD"),
            "mw": a.get("MW"),
            "mh": a.get("MH"),
            "weight_bits": _weight_bits(p),
            "macs": int(sum(v for k, v in p.items() if k.startswith("op_mac_"))),
        })
    out = {
        "board": board.name,
        "finn_board": board.finn_board,
        "part": board.part,
        "clock_mhz": float(clock_mhz),
        "fps": float(perf["estimated_throughput_fps"]),
        "latency_cycles": int(perf["critical_path_cycles"]),
        "max_cycles": int(perf["max_cycles"]),
        "bottleneck": perf["max_cycles_node_name"],
        "latency_ms": float(perf["estimated_latency_ns"]) / 1e6,
    }
    for r in RESOURCES:
        used = None if r == "ff" else int(round(total.get(_FINN_RES[r], 0)))
        out[r] = {"used": used, "available": getattr(board, r), "usable": board.usable[r], "margin": board.margins[r]}
    out["ff"]["note"] = "not estimated: FINN's analytical resource models have no FF term"
    out["layers"] = layers
    out["weight_bits"] = int(sum(ly["weight_bits"] for ly in layers))
    out["excludes"] = "FIFOs, data width converters, IODMAs and the Zynq shell (added by the hardware build)"
    return out


def _weight_bits(counts: Dict) -> int:
    """Stored weight bits from op_and_param_counts keys like ``param_weight_2b``."""
    weights = {k: v for k, v in counts.items() if k.startswith("param_weight_")}
    return int(sum(v * int(k.rsplit("_", 1)[1].rstrip("b")) for k, v in weights.items()))


def _node_attrs(path: Path) -> Dict[str, Dict]:
    if not path.exists():
        return {}
    from onnx import helper
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(path))
    out = {}
    for n in m.graph.node:
        a = {"op_type": n.op_type}
        for at in n.attribute:
            if at.name in ("PE", "SIMD", "MW", "MH", "depthwise"):
                a[at.name] = helper.get_attribute_value(at)
        out[n.name] = a
    return out


def _assign_blocks(names: List[str], attrs: Dict[str, Dict], layer_names) -> Dict[str, str]:
    """Attach each HW node to the layer (MVAU) it serves: padding and im2col to the next MVAU, pooling
    (depthwise im2col + Pool) to the previous one."""
    if not attrs:
        return {}
    mvaus = [n for n in names if attrs.get(n, {}).get("op_type", "").startswith("MVAU")]
    labels = ["L%d" % (i + 1) for i in range(len(mvaus))]
    if layer_names and len(layer_names) == len(mvaus):
        labels = list(layer_names)
    out, idx, pending = {}, -1, []
    for n in names:
        op = attrs.get(n, {}).get("op_type", "")
        if op.startswith("MVAU"):
            idx += 1
            for p in pending:
                out[p] = labels[idx]
            pending = []
            out[n] = labels[idx]
        elif op.startswith("FMPadding") or (
                op.startswith("ConvolutionInputGenerator") and not attrs[n].get("depthwise")):
            pending.append(n)
        else:
            out[n] = labels[max(idx, 0)]
    for p in pending:
        out[p] = labels[-1]
    return out


def check_fit(est: Dict, margins: bool = True) -> List[str]:
    """Violations, one line each ("LUT 41,000 > 37,240 usable (70% of 53,200)"); empty when it fits.

    ``margins=False`` checks against 100% of the board (the hard limit for refusing a build).
    """
    bad = []
    for r in RESOURCES:
        used = est[r]["used"]
        if used is None:
            continue
        limit = est[r]["usable"] if margins else est[r]["available"]
        if used > limit:
            what = "available"
            if margins:
                what = "usable (%d%% of %s)" % (round(est[r]["margin"] * 100), format(est[r]["available"], ","))
            bad.append("%s %s > %s %s" % (r.upper(), format(used, ","), format(limit, ","), what))
    return bad


def fit_refusal(est: Dict, out: str, mode: str) -> Optional[str]:
    """One line when the estimate exceeds 100% of a resource (the build is refused), else None.

    ``mode``: how the folding was chosen ("default" search, "fps" target, folding "file"), for the hint.
    """
    if not check_fit(est, margins=False):
        return None
    r = next(k for k in ("lut", "bram18", "uram", "dsp") if est[k]["used"] is not None
             and est[k]["used"] > est[k]["available"])
    pct = 100.0 * est[r]["used"] / est[r]["available"] if est[r]["available"] else float("inf")
    hint = {"default": "even FINN's smallest folding is too big: use a smaller preset or a larger board",
            "fps": "use a lower --target-fps or a smaller preset",
            "file": "lower PE/SIMD in the folding file, or use a smaller preset"}[mode]
    return ("%s: the design does not fit the %s at %.0f img/s: %s needs %s of %s (%.0f%%); %s"
            % (out, est["board"], est["fps"], r.upper(), format(est[r]["used"], ","),
               format(est[r]["available"], ","), pct, hint))


def pct(r: Dict) -> str:
    if r["used"] is None:
        return "n/a"
    return "%s (%.0f%%)" % (format(r["used"], ","), 100.0 * r["used"] / r["available"] if r["available"] else 0)
