"""The one folding search: the most images per second whose estimate fits every margin.

FINN's ``SetFolding`` folds every layer for one target fps and caps an MVAU's SIMD by
``mvau_wwidth_max``; the LUTs it spends jump with the target (build_fpga/FINN_NOTES.md, section 4).
:func:`search` instead starts from the smallest folding and repeatedly speeds up the bottleneck (the
node with the most cycles per image), taking the step that costs the least share of the board, until
the bottleneck cannot get faster within the margins. Costs are FINN's own per-node models (the same
functions its estimate reports call) plus what the hardware build adds around the layers (FIFOs,
width converters, DMAs: :func:`build_fpga.estimates.interconnect`), checked on every accepted step.
The result names the binding constraint: the resource over its margin, or the node that is fully
parallel already.

Designs that stream weights from DDR (``external_weights.py``; the paper preset) take another walk,
:func:`search_ddr_bound`: :func:`search` starts from FINN's smallest folding, where their on-chip
layers need not fit yet (at PE = SIMD = 1 a layer's URAM count is its matrix over 4096 words), and
speeding up past the DDR bound buys nothing. FINN's SetFolding is walked up its target fps instead,
up to the first target whose estimate reaches the DDR bound.

Knobs move together where FINN's streams tie them: a depthwise window generator's SIMD equals the
PE of the max pool it feeds, and an MVAU's window generator takes the SIMD that feeds the MVAU
without a width converter where one divides the other (or a parallel window when it must be faster).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .boards import Board
from .config import BuildConfig
from .estimate import Estimate, FoldingSearch
from .estimates import RESOURCE_KEYS, interconnect, node_resources, resource_totals
from .external_weights import divisors
from .finn_flow import refold, run_flow
from .preflight import DEFAULT_FIFO

SEARCH_FOLDING = "search_folding_config.json"  # in the FINN output dir

FOLDING_ATTRS = ("PE", "SIMD", "parallel_window")
INTERCONNECT_TRIES = 8  # cheapest candidates per step checked with FIFOs/DWCs/IODMAs before giving up


@dataclass
class Knob:
    """Nodes whose folding attributes change together, and their legal settings (one dict per node).

    :meth:`price` evaluates every setting once (FINN's cycle and resource models depend only on the
    node's own attributes), so the search itself only compares numbers.
    """

    insts: List
    options: List[Tuple[Dict[str, int], ...]]
    current: int = 0
    cycles: np.ndarray = None  # per option: cycles of the knob's slowest node
    costs: np.ndarray = None  # per option: resources (RESOURCE_KEYS) of the knob's nodes

    def set(self, i: int) -> None:
        for inst, attrs in zip(self.insts, self.options[i]):
            for k, v in attrs.items():
                inst.set_nodeattr(k, v)
        self.current = i

    def price(self, part: str) -> None:
        """Tabulate every legal option (illegal ones are dropped), then set the first."""
        rows = []
        for i in range(len(self.options)):
            self.set(i)
            if _legal(self):
                cost = sum(np.array([r[k] for k in RESOURCE_KEYS]) for r in
                           (node_resources(inst, part) for inst in self.insts))
                rows.append((self.options[i], max(int(inst.get_exp_cycles()) for inst in self.insts), cost))
        self.options = [r[0] for r in rows]
        self.cycles = np.array([r[1] for r in rows], dtype=np.int64)
        self.costs = np.array([r[2] for r in rows], dtype=np.int64)
        self.set(0)

    def slowest(self) -> str:
        return max(self.insts, key=lambda inst: inst.get_exp_cycles()).onnx_node.name


@dataclass
class FoldingResult:
    config: Dict  # FINN folding config (node name -> attrs), for DataflowBuildConfig.folding_config_file
    fps: float
    max_cycles: int
    bottleneck: str
    binding: str  # "lut", "bram18", "uram", "dsp", or "parallelism"
    binding_detail: str  # one line: why the bottleneck could not be made faster
    used: Dict[str, int]  # layers + interconnect at the chosen folding
    steps: List[Dict] = field(default_factory=list)


def knobs(model, part: str) -> List[Knob]:
    """One knob per foldable unit of the dataflow graph, priced, each at its smallest folding."""
    from qonnx.custom_op.registry import getCustomOp

    out: List[Knob] = []
    taken = set()
    for node in model.graph.node:
        if node.name in taken or not node.domain.startswith("finn.custom_op.fpgadataflow"):
            continue
        op, inst = node.op_type, getCustomOp(node)
        if op.startswith("ConvolutionInputGenerator") and inst.get_nodeattr("depthwise"):
            pool = model.find_consumer(node.output[0])
            pool_inst = getCustomOp(pool)
            taken.add(pool.name)
            opts = [({"SIMD": c, "parallel_window": 0}, {"PE": c})
                    for c in divisors(pool_inst.get_nodeattr("Channels"))]
            out.append(Knob([inst, pool_inst], opts))
        elif op.startswith("ConvolutionInputGenerator"):
            mvau = model.find_consumer(node.output[0])
            if mvau is None or not mvau.op_type.startswith("MVAU"):
                opts = [({"SIMD": s, "parallel_window": 0},) for s in divisors(inst.get_nodeattr("IFMChannels"))]
                out.append(Knob([inst], opts))
                continue
            taken.add(mvau.name)
            mvau_inst = getCustomOp(mvau)
            out.append(Knob([inst, mvau_inst], _window_mvau_options(inst, mvau_inst)))
        elif op.startswith("MVAU"):
            opts = [({"PE": p, "SIMD": s},) for p in divisors(inst.get_nodeattr("MH"))
                    for s in divisors(inst.get_nodeattr("MW"))]
            out.append(Knob([inst], opts))
        elif op.startswith("Thresholding"):
            out.append(Knob([inst], [({"PE": p},) for p in divisors(inst.get_nodeattr("NumChannels"))]))
        elif op.startswith("FMPadding"):
            out.append(Knob([inst], [({"SIMD": s},) for s in divisors(inst.get_nodeattr("NumChannels"))]))
    for k in out:
        k.price(part)
    return out


def _window_mvau_options(swg, mvau) -> List[Tuple[Dict[str, int], ...]]:
    """(window generator, MVAU) settings: the generator's SIMD is gcd(MVAU SIMD, channels), so the
    two streams match without a converter when one divides the other; or a parallel window."""
    channels = int(swg.get_nodeattr("IFMChannels"))
    opts = []
    for p in divisors(mvau.get_nodeattr("MH")):
        for s in divisors(mvau.get_nodeattr("MW")):
            opts.append(({"SIMD": math.gcd(s, channels), "parallel_window": 0}, {"PE": p, "SIMD": s}))
            opts.append(({"SIMD": channels, "parallel_window": 1}, {"PE": p, "SIMD": s}))
    return opts


def _legal(knob: Knob) -> bool:
    """HLS streams are ap_uint<W> with W <= MAX_ALLOWED_AP_INT_W (SetFolding reverts past it)."""
    from finn.util.basic import MAX_ALLOWED_AP_INT_W

    for inst in knob.insts:
        if inst.onnx_node.op_type.endswith("_hls"):
            n_in = len(inst.onnx_node.input)
            widths = [inst.get_instream_width(i) for i in range(min(n_in, 2))] + [inst.get_outstream_width()]
            if max(widths) > MAX_ALLOWED_AP_INT_W:
                return False
    return True


def _share(used: np.ndarray, usable: np.ndarray) -> float:
    """Cost of a design: the summed shares of the usable budgets (a resource the board lacks counts
    only when used, and then too much)."""
    return float(sum(u / lim if lim else (np.inf if u else 0.0) for u, lim in zip(used, usable)))


def _over(used: np.ndarray, usable: np.ndarray) -> List[str]:
    return [k for k, u, lim in zip(RESOURCE_KEYS, used, usable) if u > lim]


def _interconnect_total(model, board: Board, fifo: str) -> np.ndarray:
    total = resource_totals(interconnect(model, board, fifo))
    return np.array([total[k] for k in RESOURCE_KEYS], dtype=np.int64)


def search(model, board: Board, clock_mhz: float, log=None, fifo: str = DEFAULT_FIFO) -> FoldingResult:
    """Fold ``model`` (a FINN dataflow graph, e.g. step_generate_estimate_reports.onnx; its folding
    attributes are changed in place) for the highest fps within the board's margins, the FIFOs counted
    as the FIFO strategy ``fifo`` makes them."""
    usable = np.array([board.usable[k] for k in RESOURCE_KEYS], dtype=np.int64)
    ks = knobs(model, board.part)
    steps: List[Dict] = []
    extra = _interconnect_total(model, board, fifo)
    while True:
        cycles = np.array([k.cycles[k.current] for k in ks])
        b = int(np.argmax(cycles))
        kb, cmax = ks[b], int(cycles[b])
        rest = sum(k.costs[k.current] for i, k in enumerate(ks) if i != b)
        faster = np.nonzero(kb.cycles < cmax)[0]
        cands = sorted((_share(rest + kb.costs[i], usable), -int(kb.cycles[i]), int(i)) for i in faster)
        start, accepted, detail = kb.current, None, ""
        for tries, (_, _, i) in enumerate(cands):
            used = rest + kb.costs[i]
            over = _over(used, usable)
            if over:
                detail = detail or _over_line(used, usable, over[0], "layers alone")
                break
            if tries >= INTERCONNECT_TRIES:
                break
            kb.set(i)
            ext = _interconnect_total(model, board, fifo)
            over = _over(used + ext, usable)
            if not over:
                accepted, extra = i, ext
                break
            detail = detail or _over_line(used + ext, usable, over[0], "with FIFOs, DWCs and IODMAs")
        if accepted is None:
            kb.set(start)
            name = kb.slowest()
            if not cands:
                binding, detail = "parallelism", "%s is as parallel as FINN allows (%d cycles)" % (name, cmax)
            else:
                binding = detail.split()[0].lower()
                detail = "speeding up %s (%d cycles) needs %s" % (name, cmax, detail)
            total = sum(k.costs[k.current] for k in ks) + extra
            return FoldingResult(
                config=folding_config(model), fps=clock_mhz * 1e6 / cmax, max_cycles=cmax, bottleneck=name,
                binding=binding, binding_detail=detail, used={k: int(v) for k, v in zip(RESOURCE_KEYS, total)},
                steps=steps)
        new_max = max(int(k.cycles[k.current]) for k in ks)
        steps.append({"node": kb.insts[-1].onnx_node.name, "attrs": [dict(a) for a in kb.options[accepted]],
                      "fps": round(clock_mhz * 1e6 / new_max, 1)})
        if log is not None and len(steps) % 20 == 0:
            log("build_fpga:   folding search: %d steps, %.0f img/s" % (len(steps), steps[-1]["fps"]))


def _over_line(used: np.ndarray, usable: np.ndarray, key: str, what: str) -> str:
    i = RESOURCE_KEYS.index(key)
    return "%s %s > %s usable (%s)" % (key.upper(), format(int(used[i]), ","), format(int(usable[i]), ","), what)


def folding_config(model, names: Optional[Sequence[str]] = None) -> Dict:
    """FINN folding config (``auto_folding_config.json`` format) of the foldable nodes of ``model``."""
    from qonnx.custom_op.registry import getCustomOp

    cfg: Dict = {"Defaults": {}}
    for node in model.graph.node:
        if names is not None and node.name not in names:
            continue
        if not node.domain.startswith("finn.custom_op.fpgadataflow"):
            continue
        inst = getCustomOp(node)
        attrs = inst.get_nodeattr_types()
        row = {a: int(inst.get_nodeattr(a)) for a in FOLDING_ATTRS if a in attrs}
        if row:
            cfg[node.name] = row
    return cfg


def search_max_fps(onnx: str, finn_dir: str, cfg: BuildConfig, layer_names: Optional[Sequence[str]] = None,
                   log: Callable[[str], None] = lambda s: None) -> Tuple[Estimate, List[Dict]]:
    """The default folding of ``python -m build_fpga``: FINN's estimate flow at its smallest folding,
    :func:`search` on the resulting graph, and FINN refolded with the folding found (so the reports
    are FINN's own). Returns (the estimates, with ``folding_search`` added; the search's steps)."""
    from qonnx.core.modelwrapper import ModelWrapper

    board = cfg.target
    first = run_flow(onnx, finn_dir, replace(cfg, target_fps=None, folding=None, hw_codegen=False), layer_names)
    if first.ddr_fps is not None:
        return search_ddr_bound(finn_dir, cfg, layer_names, log, ddr_fps=first.ddr_fps)
    model = ModelWrapper(os.path.join(finn_dir, "intermediate_models", "step_generate_estimate_reports.onnx"))
    found = search(model, board, cfg.clock(), log, cfg.fifo)
    path = os.path.join(finn_dir, SEARCH_FOLDING)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(found.config, f, indent=2)
    est = refold(finn_dir, replace(cfg, target_fps=None, folding=path), layer_names)
    search_end = FoldingSearch(binding=found.binding, detail=found.binding_detail, steps=len(found.steps),
                               fps=round(found.fps, 1))
    return replace(est, folding_search=search_end), found.steps


DDR_TARGETS = (250, 500, 1000, 2000, 4000, 8000)  # FINN target fps walked by search_ddr_bound


def search_ddr_bound(finn_dir: str, cfg: BuildConfig, layer_names: Optional[Sequence[str]] = None,
                     log: Callable[[str], None] = lambda s: None,
                     ddr_fps: Optional[float] = None) -> Tuple[Estimate, List[Dict]]:
    """The folding of a design whose weights partly stream from DDR, on a finished :func:`run_flow` dir.

    Refolds with FINN's SetFolding at rising targets (:data:`DDR_TARGETS`) until an estimate leaves the
    margins after one fitted, or reaches the DDR bound; at the bound it adds the target just above it, the same
    throughput in fewer resources. ``ddr_fps`` (the bound at the smallest folding) below the first target
    starts the walk just above it (the Pynq-Z2's 64-bit port: about 115 img/s at 100 MHz), where a
    narrower folding has a chance to fit a small board. Keeps :func:`pick_best`'s row (refolding to it unless it was the
    last one tried). Returns (its estimates with ``folding_search``, one row per target tried).
    """
    from .steps import FOLDING_CONFIG

    rows: List[Dict] = []
    ests: List[Estimate] = []

    def estimate(fps):
        est = refold(finn_dir, replace(cfg, target_fps=fps, folding=None, hw_codegen=False), layer_names)
        rows.append(sweep_row(fps, est))
        ests.append(est)
        log("build_fpga:   target %6d img/s -> %8.0f img/s (DDR bound %.0f), LUT %s, BRAM18 %s, URAM %s%s" % (
            fps, est.fps, est.ddr_fps, est.lut.pct(), est.bram18.pct(), est.uram.pct(),
            "" if rows[-1]["fits_margins"] else "  (over)"))
        return est

    over = []
    targets = DDR_TARGETS
    if ddr_fps is not None and int(ddr_fps) + 1 < DDR_TARGETS[0]:
        targets = (int(ddr_fps) + 1,) + DDR_TARGETS
    for fps in targets:
        est = estimate(fps)
        over = est.check_fit()
        if over:
            if any(r["fits_margins"] for r in rows):
                break
            # Below the first fit, a higher target may still fit: a narrower folding makes deeper, narrower
            # weight memories, which pack worse into URAM (72 bits wide) and leave more in BRAM (the paper
            # preset on the ZCU104 at 150 MHz: 1,214 BRAM18 at target 250).
            continue
        if est.fps >= est.ddr_fps:
            if int(est.ddr_fps) + 1 < fps:
                estimate(int(est.ddr_fps) + 1)
            break
    best = pick_best(rows)
    best["chosen"] = True
    if best is rows[-1] and not cfg.hw_codegen:
        est = ests[-1]  # the FINN dir is at that folding already (a refold of the paper preset takes minutes)
    else:
        est = refold(finn_dir, replace(cfg, target_fps=best["target_fps"], folding=None), layer_names)
    with open(os.path.join(finn_dir, "report", FOLDING_CONFIG), encoding="utf-8") as f:
        folding = f.read()
    with open(os.path.join(finn_dir, SEARCH_FOLDING), "w", encoding="utf-8") as f:
        f.write(folding)
    ddr = est.ddr
    if best["fps"] >= best["ddr_fps"]:
        binding, detail = "ddr", "the DDR bound: %s stream %.1f MB per image over %s (%.0f img/s)" % (
            ", ".join(ddr["streamed_layers"]), ddr["weight_bytes_per_image"] / 1e6, ddr["port"], ddr["fps"])
    elif over:
        binding, detail = over[0].split()[0].lower(), "the next target needs %s" % over[0]
    else:
        binding, detail = "parallelism", "FINN's SetFolding reached %.0f img/s at its highest target" % est.fps
    search_end = FoldingSearch(binding=binding, detail=detail, steps=len(rows), fps=best["fps_effective"])
    return replace(est, folding_search=search_end), rows


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


def sweep_row(target_fps: int, est: Estimate) -> Dict:
    """One target of :func:`search_ddr_bound`: FINN's estimate, the DDR bound, the lower of the two, fit."""
    ddr_fps = est.ddr_fps
    row = {"target_fps": int(target_fps), "fps": round(float(est.fps), 1), "bottleneck": est.bottleneck,
           "ddr_fps": None if ddr_fps is None else round(ddr_fps, 1), "fps_effective": round(est.effective_fps, 1),
           "fits_margins": not est.check_fit(), "fits_board": not est.check_fit(margins=False), "chosen": False}
    for r in RESOURCE_KEYS:
        row[r] = getattr(est, r).used
    return row
