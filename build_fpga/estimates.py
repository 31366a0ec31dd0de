"""FINN's estimate reports -> our :class:`~build_fpga.estimate.Estimate` (its ``check_fit`` is the fit check
against a board and its margins).

The estimate counts the layers (FINN's per-node models) and what the hardware build adds around them
(FIFOs, data-width converters, DMAs: :func:`interconnect`); ``used`` is their sum, and the fit check
uses it. Only the Zynq shell (the processing system's AXI interconnect, clock wizard) is left out.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .boards import RESOURCES, Board
from .estimate import Estimate, LayerEstimate, Resource
from .preflight import DEFAULT_FIFO

_FINN_RES = {"lut": "LUT", "bram18": "BRAM_18K", "uram": "URAM", "dsp": "DSP"}
RESOURCE_KEYS = ("lut", "bram18", "uram", "dsp")  # what FINN's analytical models estimate (no FF)
EXCLUDES = "the Zynq shell (the processing system's AXI interconnect, clock wizard)"


def parse_estimates(report_dir, board: Board, clock_mhz: float, models_dir=None,
                    layer_names: Optional[Sequence[str]] = None, fifo: str = DEFAULT_FIFO) -> Estimate:
    """FINN's estimate reports -> our :class:`~build_fpga.estimate.Estimate` (the figures issue #5 asks
    for, and per-layer rows).

    FINN's analytical models have no FF estimate: ``ff.used`` is None (only Vivado HLS's reports,
    step_hw_ipgen, give FFs).
    """
    report_dir = Path(report_dir)
    perf = json.loads((report_dir / "estimate_network_performance.json").read_text())
    res = json.loads((report_dir / "estimate_layer_resources.json").read_text())
    cycles = json.loads((report_dir / "estimate_layer_cycles.json").read_text())
    params = json.loads((report_dir / "op_and_param_counts.json").read_text())
    res.pop("total")
    model = _final_model(models_dir)
    attrs = _node_attrs(model) if model is not None else {}
    blocks = _assign_blocks(list(res), attrs, layer_names)
    layers = []
    for name, r in res.items():
        a = attrs.get(name, {})
        p = params.get(name, {})
        row = dict(
            node=name,
            op_type=a.get("op_type", name.rsplit("_", 1)[0]),
            layer=blocks.get(name),
            cycles=int(cycles.get(name, 0)),
            lut=int(round(r.get("LUT", 0))),
            bram18=int(round(r.get("BRAM_18K", 0))),
            uram=int(round(r.get("URAM", 0))),
            dsp=int(round(r.get("DSP", 0))),
            bram_efficiency=r.get("BRAM_efficiency"),
            pe=a.get("PE"),
            simd=a.get("SIMD"),
            mw=a.get("MW"),
            mh=a.get("MH"),
            weight_bits=_weight_bits(p),
            macs=int(sum(v for k, v in p.items() if k.startswith("op_mac_"))),
        )
        if model is not None and row["op_type"] == "MVAU_rtl":
            from qonnx.custom_op.registry import getCustomOp

            fixed = node_resources(getCustomOp(model.get_node_from_name(name)), board.part)
            row.update(lut=fixed["lut"], dsp=fixed["dsp"], note=RTL_MVAU_NOTE)
        layers.append(LayerEstimate(**row))
    extra = interconnect(model, board, fifo) if model is not None else []
    around = resource_totals(extra)
    resources = {}
    for r in RESOURCES:
        limits = dict(available=getattr(board, r), usable=board.usable[r], margin=board.margins[r])
        if r == "ff":
            resources[r] = Resource(used=None, note="not estimated: FINN's analytical resource models have no FF term",
                                    **limits)
        else:
            in_layers = sum(getattr(ly, r) for ly in layers)
            resources[r] = Resource(used=in_layers + around[r], layers=in_layers, interconnect=around[r], **limits)
    return Estimate(
        board=board.name,
        finn_board=board.finn_board,
        part=board.part,
        clock_mhz=float(clock_mhz),
        fps=float(perf["estimated_throughput_fps"]),
        latency_cycles=int(perf["critical_path_cycles"]),
        max_cycles=int(perf["max_cycles"]),
        bottleneck=perf["max_cycles_node_name"],
        latency_ms=float(perf["estimated_latency_ns"]) / 1e6,
        layers=layers,
        interconnect=extra,
        weight_bits=int(sum(ly.weight_bits for ly in layers)),
        excludes=EXCLUDES,
        fifo_strategy=fifo if model is not None else None,
        **resources,
    )


def _final_model(models_dir):
    path = Path(models_dir) / "step_generate_estimate_reports.onnx" if models_dir else None
    if path is None or not path.exists():
        return None
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


def _weight_bits(counts: Dict) -> int:
    """Stored weight bits from op_and_param_counts keys like ``param_weight_2b``."""
    weights = {k: v for k, v in counts.items() if k.startswith("param_weight_")}
    return int(sum(v * int(k.rsplit("_", 1)[1].rstrip("b")) for k, v in weights.items()))


def _node_attrs(model) -> Dict[str, Dict]:
    from onnx import helper

    out = {}
    for n in model.graph.node:
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


def ddr_estimate(report_dir, board: Board, clock_mhz: float) -> Dict:
    """The DDR bound on img/s of the weights our steps stream (report/external_weights.json) and the
    image in and features out (report/io_shapes.json); ``fps`` None when nothing streams."""
    from .external_weights import ddr_bound

    report_dir = Path(report_dir)
    streams = json.loads((report_dir / "external_weights.json").read_text())
    io = json.loads((report_dir / "io_shapes.json").read_text())
    nbytes = [int(np.prod(io[k][0][1:])) for k in ("ishape_packed", "oshape_packed")]
    return ddr_bound(streams, board, clock_mhz, *nbytes)
# ---------------------------------------------------------------- what FINN's estimate reports leave out
#
# FINN's estimate step prices only the layers. The hardware build adds a FIFO on every stream, a
# data-width converter (DWC) wherever a producer's stream width differs from its consumer's, and an
# input and an output DMA (IODMA); the fit check counts them, priced as follows.
# - FIFOs and DWCs: inserted by FINN's own transformations (InsertIODMA, InsertDWC, InsertFIFO,
#   SpecializeLayers, as ZynqBuild and step_set_fifo_depths do) on a weightless copy of the graph,
#   and priced by FINN's own models (StreamingFIFO's fifo.sv cost model, the DWC's LUT model).
# - FIFO depths: those of the FIFO strategy the hardware build runs (``--fifo``, FINN's
#   step_set_fifo_depths). force_minimal_fifos (the default) inserts every FIFO with
#   InsertFIFO(create_shallow_fifos=True) at the depth its neighbours ask for (the larger of the
#   producer's outFIFODepths and the consumer's inFIFODepths, 2 unless set) and FINN's ram_style
#   "auto": the estimate makes the same FIFOs and prices them with FINN's StreamingFIFO model
#   (fifo.sv builds depth <= 33 as one shift-register stage, W + a few LUTs, no BRAM).
#   distributed_sim sizes FIFOs by simulating the layers (XSI, needs Vivado), which no estimate can
#   run. Our allowance for it: each FIFO holds one row of the feature map passing through it (the
#   whole vector after the flatten), in stream words, rounded up to a power of two, at least
#   FIFO_MIN_DEPTH, in the cheapest storage (shift register, LUTRAM, BRAM; URAM where the board has
#   it) by share of the usable budget. Around a width converter both FIFOs carry the same elements:
#   the narrower one holds the row, the other stays at FINN's minimal depth. The sliding-window
#   generators buffer their own rows, so a row per stream is generous for a balanced pipeline.
# - IODMAs: FINN has no resource model for IODMA_hls; IODMA_RULE per DMA is our allowance (not a
#   measurement) for a Vitis HLS AXI4 master with its default 64-bit burst buffers (one BRAM36) and
#   AXI-lite control.
# - MVAU_rtl (the DSP-mapped 8-bit layer): FINN estimates 0 LUT and 4 multiplications per DSP48E1.
#   finn-rtllib's mvu.sv packs 1 + (25 - W) // (W + A - 1) products per DSP48E1 (3 for INT2 x UINT8)
#   and sums the SIMD DSP chains in LUTs: we count ceil(PE / lanes) * SIMD DSPs and
#   PE * ((SIMD - 1) * accumulator bits + SIMD) LUTs (adder tree + lane sign correction), or FINN's
#   figure where it is higher.

FIFO_MIN_DEPTH = 32
IODMA_RULE = {"lut": 1500, "bram18": 2, "uram": 0, "dsp": 0}
SHALLOW_DEPTH = 2  # FINN's minimal FIFO depth (HWCustomOp inFIFODepths/outFIFODepths default)
AXI_PORT_WIDTH = 64  # FINN's ZynqBuild default (axi_port_width)
RTL_MVAU_NOTE = "LUT and DSP from finn-rtllib's mvu.sv (FINN's estimate: 0 LUT, 4 products per DSP48)"


def node_resources(inst, part: str) -> Dict[str, int]:
    """FINN's resource estimate of one HW node (the functions its estimate reports call), with the
    MVAU_rtl correction described above."""
    r = {"lut": inst.lut_estimation(part), "bram18": inst.bram_estimation(part),
         "uram": inst.uram_estimation(part), "dsp": inst.dsp_estimation(part)}
    if inst.onnx_node.op_type == "MVAU_rtl":
        lut, dsp = rtl_mvau_cost(inst, part)
        r["lut"], r["dsp"] = max(r["lut"], lut), max(r["dsp"], dsp)
    return {k: int(round(float(v))) for k, v in r.items()}


def rtl_mvau_cost(inst, part: str) -> Tuple[int, int]:
    """(LUT, DSP) of finn-rtllib's mvu.sv for an MVAU_rtl node on a DSP48E1/E2 part (see above);
    (0, 0) on parts where FINN's own model is used."""
    from finn.util.basic import get_dsp_block

    block = get_dsp_block(part)
    if block not in ("DSP48E1", "DSP48E2"):
        return 0, 0
    pe, simd = int(inst.get_nodeattr("PE")), int(inst.get_nodeattr("SIMD"))
    w, a = inst.get_input_datatype(1).bitwidth(), inst.get_input_datatype(0).bitwidth()
    a_port = 25 if block == "DSP48E1" else 27
    lanes = 1 + (a_port - w) // (w + a - 1)
    acc = inst.get_output_datatype().bitwidth()
    return pe * ((simd - 1) * acc + simd), math.ceil(pe / lanes) * simd


def fifo_depth(folded_shape: Sequence[int]) -> int:
    """Our FIFO depth rule (see above): one row of the map (whole vector for FC) in stream words."""
    shape = [int(v) for v in folded_shape]
    words = int(np.prod(shape[2:-1])) if len(shape) >= 5 else int(np.prod(shape[1:-1]))
    return max(FIFO_MIN_DEPTH, 1 << max(words - 1, 0).bit_length())


def _cheapest_fifo(inst, board: Board) -> Tuple[str, Dict[str, int]]:
    """The storage FINN's fifo.sv cost model prices lowest (by share of the usable budget) for this
    FIFO; sets it on ``inst``. (StreamingFIFO.get_fifo_cost calls the same two functions, but logs a
    warning for every style it would not pick itself.)"""
    from finn.util.basic import is_versal
    from finn.util.resource_models import _fifo_cost, _resolve

    depth, width = int(inst.get_nodeattr("depth")), int(inst.get_instream_width_padded())
    best = None
    for asked in ["srl", "distributed", "block"] + (["ultra"] if board.uram else []):
        style = _resolve(depth, width, asked)
        c = _fifo_cost(depth, width, style, is_versal(board.part))
        res = {"lut": int(c.lut), "bram18": int(c.bram), "uram": int(c.uram), "dsp": 0}
        score = sum(res[k] / board.usable[k] for k in RESOURCE_KEYS if board.usable[k])
        if best is None or score < best[0]:
            best = (score, style, res)
    inst.set_nodeattr("ram_style", best[1])
    return best[1], best[2]


def resource_totals(rows: Sequence[Dict]) -> Dict[str, int]:
    """Per resource of RESOURCE_KEYS, the sum over ``rows`` (:func:`interconnect` rows, :func:`node_resources`)."""
    return {k: sum(int(r[k]) for r in rows) for k in RESOURCE_KEYS}


def interconnect(model, board: Board, fifo: str = DEFAULT_FIFO) -> List[Dict]:
    """What the hardware build adds to the dataflow graph ``model``: one row per FIFO, DWC and IODMA
    (``kind`` "fifo"/"dwc"/"iodma", resources, stream widths, FIFO depth and storage), the FIFOs as
    the FIFO strategy ``fifo`` (``--fifo``) makes them; see above."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.insert_iodma import InsertIODMA
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    proto = copy.deepcopy(model.model)
    del proto.graph.initializer[:]  # the inserted nodes' models need shapes and widths, not weights
    m = ModelWrapper(proto)
    streamed = []
    for n in m.graph.node:
        # InsertIODMA would lay out a streamed MVAU's weights (mem_mode external) for its weight DMA, a
        # Python loop over every word (seconds per call for the paper preset's fc1): priced here as one
        # more IODMA each instead, the MVAU treated as on-chip for the FIFOs and DWCs around it.
        if n.op_type.startswith("MVAU") and getCustomOp(n).get_nodeattr("mem_mode") == "external":
            getCustomOp(n).set_nodeattr("mem_mode", "internal_decoupled")
            streamed.append(n.name)
    # FINN's order: FIFOs and DWCs between the layers first (step_set_fifo_depths), the DMAs and their
    # DWCs after (ZynqBuild); the other way round InsertFIFO refuses an IODMA behind a last layer with
    # PE > 1 (its stream is PE elements per word, the DMA's one byte).
    for t in (InsertDWC(), InsertFIFO(create_shallow_fifos=True), InsertIODMA(AXI_PORT_WIDTH), InsertDWC(),
              SpecializeLayers(board.part)):
        m = m.transform(t, make_deepcopy=False, cleanup=False)  # our private copy; only node costs are read
    if fifo == "distributed_sim":
        _set_fifo_depths(m)
    rows = []
    for n in m.graph.node:
        inst = getCustomOp(n) if n.domain.startswith("finn.custom_op.fpgadataflow") else None
        if n.op_type.startswith("StreamingFIFO"):
            if fifo == "distributed_sim":
                style, res = _cheapest_fifo(inst, board)
            else:
                style, res = inst.resolve_ram_style(), node_resources(inst, board.part)
            rows.append(dict(node=n.name, kind="fifo", depth=int(inst.get_nodeattr("depth")), ram_style=style,
                             width=int(inst.get_instream_width_padded()), **res))
        elif n.op_type.startswith("StreamingDataWidthConverter"):
            rows.append(dict(node=n.name, kind="dwc", in_width=int(inst.get_instream_width()),
                             out_width=int(inst.get_outstream_width()), **node_resources(inst, board.part)))
        elif n.op_type.startswith("IODMA"):
            rows.append(dict(node=n.name, kind="iodma", direction=inst.get_nodeattr("direction"),
                             width=int(inst.get_nodeattr("intfWidth")), **IODMA_RULE))
    for name in streamed:
        rows.append(dict(node="weights of " + name, kind="iodma", direction="in", width=AXI_PORT_WIDTH, **IODMA_RULE))
    return rows


def _set_fifo_depths(m) -> None:
    """Depth of every FIFO by our rule; around a width converter only the narrower FIFO holds the
    row (both hold the same elements), the other keeps FINN's minimal depth."""
    from qonnx.custom_op.registry import getCustomOp

    for n in m.graph.node:
        if n.op_type.startswith("StreamingFIFO"):
            inst = getCustomOp(n)
            inst.set_nodeattr("depth", fifo_depth(inst.get_nodeattr("folded_shape")))
    for n in m.graph.node:
        if not n.op_type.startswith("StreamingDataWidthConverter"):
            continue
        around = [m.find_producer(n.input[0]), m.find_consumer(n.output[0])]
        fifos = [getCustomOp(f) for f in around if f is not None and f.op_type.startswith("StreamingFIFO")]
        if len(fifos) == 2:
            wider = max(fifos, key=lambda f: f.get_instream_width_padded())
            wider.set_nodeattr("depth", SHALLOW_DEPTH)

