"""Which layers' weights stay on chip and which stream from DDR, and what streaming costs.

FINN's MVAU has three ways to hold its weights: inside the HLS code (``internal_embedded``), in a
separate on-chip memory streamer (``internal_decoupled``; BRAM, or URAM with ``ram_style``
"ultra"), or nowhere on chip (``external``): then an IODMA in the Zynq shell reads the packed
matrix from DDR and streams it into the layer, once per image. The paper's AlexNet holds ~58 Mbit
of weights, fc1 (9216x4096) and fc2 (4096x4096) 54.5 Mbit of it, against ~5 Mbit of BRAM on a
KV260 and ~9 Mbit of BRAM + ~21 Mbit of URAM on a ZCU104 (FINN's 80% margins).

:func:`plan` decides per layer, before folding, from FINN's own memory estimates: each layer's fewest
BRAM18 and URAM over the foldings FINN allows (:func:`memory_floor`; FINN packs PE*SIMD-bit words into
18-bit-wide, 1024-deep BRAM18s, so the shape decides the packing loss), and the largest fully
connected layers stream until the rest fits the usable BRAM18 and URAM. After folding,
:func:`assign_ram_styles` moves the on-chip layers that save the most BRAM into URAM, and
:func:`assign_lutram` into LUTRAM (``ram_style`` "distributed", FINN's LUT estimate of it) while BRAM
is over its margin, both from FINN's estimates at that folding, and :func:`align_streams` makes every
stream whole bytes per word. FINN's estimates then check the design like any other.

Only fully connected layers stream: FINN's weight IODMA replays the matrix once per image (its
driver starts it with the batch size as count), while a conv layer reads its matrix once per
output pixel, so ``external`` on a conv layer would stall it (and would need far more bandwidth).

The DDR bound: every IODMA of FINN's Zynq shell goes through one SmartConnect into the PS's
``S_AXI_HP0`` port, ``finn.util.basic.pynq_native_port_width[board]`` bits wide (64 on Zynq-7000,
128 on Zynq UltraScale+) and clocked with the accelerator (``finn/transformation/fpgadataflow/
templates.py``, ``custom_zynq_shell_template``). So the weights and images of one image must pass
``min(port bits / 8 * clock, DDR peak)`` bytes per second; that divided by the bytes per image is
the ceiling on img/s, beside FINN's compute estimate.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from bnn_transfer.host.errors import BnnError


@dataclass
class WeightLayer:
    """One MVAU's weights as :func:`plan` sees them."""

    node: str  # FINN node name (MVAU_hls_5)
    layer: str  # ours (fc1)
    mw: int
    mh: int
    weight_bits: int  # bits per weight (1 for xnor layers, 2 for the 8-bit first layer)
    repeats: int  # matrix reads per image: 1 for FC layers, output pixels for convs
    mem_mode: str = "internal_decoupled"
    ram_style: str = "auto"

    @property
    def bits(self) -> int:
        return self.mw * self.mh * self.weight_bits

    @property
    def streamable(self) -> bool:
        return self.repeats == 1

    def to_dict(self):
        d = asdict(self)
        d["bits"] = self.bits
        d["external"] = self.mem_mode == "external"
        return d


def mvau_layers(model, layer_names: Optional[Sequence[str]] = None) -> List[WeightLayer]:
    """The MVAUs of a FINN HW graph (after step_convert_to_hw) in order, with their weight geometry.

    ``repeats`` is the number of output vectors per image (``numInputVectors``): the MVAU reads
    its whole matrix once per output vector.
    """
    from qonnx.custom_op.registry import getCustomOp

    rows = []
    for n in model.graph.node:
        if not n.op_type.startswith("MVAU"):
            continue
        inst = getCustomOp(n)
        rows.append(WeightLayer(
            node=n.name, layer="L%d" % (len(rows) + 1), mw=int(inst.get_nodeattr("MW")),
            mh=int(inst.get_nodeattr("MH")), weight_bits=int(inst.get_input_datatype(1).bitwidth()),
            repeats=int(np.prod(inst.get_nodeattr("numInputVectors"))),
            mem_mode=inst.get_nodeattr("mem_mode"), ram_style=inst.get_nodeattr("ram_style")))
    if layer_names is not None and len(layer_names) == len(rows):
        for row, name in zip(rows, layer_names):
            row.layer = name
    return rows


def memory_floor(inst, part: str) -> Dict[str, int]:
    """FINN's fewest BRAM18 (``ram_style`` block) and fewest URAM (ultra) for one MVAU's weights over
    every PE x SIMD it allows; the node's attributes are restored."""
    saved = {k: inst.get_nodeattr(k) for k in ("PE", "SIMD", "ram_style", "mem_mode")}
    inst.set_nodeattr("mem_mode", "internal_decoupled")
    best = {"bram18": None, "uram": None}
    for pe in divisors(int(inst.get_nodeattr("MH"))):
        for simd in divisors(int(inst.get_nodeattr("MW"))):
            inst.set_nodeattr("PE", pe)
            inst.set_nodeattr("SIMD", simd)
            for key, style, fn in (("bram18", "block", inst.bram_estimation), ("uram", "ultra", inst.uram_estimation)):
                inst.set_nodeattr("ram_style", style)
                n = int(fn(part))
                best[key] = n if best[key] is None else min(best[key], n)
    for k, v in saved.items():
        inst.set_nodeattr(k, v)
    return best


def plan(layers: List[WeightLayer], board, floors: Dict[str, Dict[str, int]]) -> List[WeightLayer]:
    """Decide which layers stream (``mem_mode`` external) for ``board``; a copy, the input is not changed.

    ``floors``: node -> :func:`memory_floor` (FINN's fewest BRAM18 and URAM for its weights). The
    on-chip layers fit when, the largest going to URAM while the usable URAM lasts (as
    :func:`assign_ram_styles` does after folding), the rest's BRAM18 stay within the usable BRAM18;
    the largest fully connected layers stream until they do. Where each on-chip layer goes (BRAM,
    URAM, LUTRAM) is decided after folding. FIFOs, width converters and DMAs are not in this count:
    the fit check after folding adds them. BnnError when even with every FC layer streamed the rest
    does not fit.
    """
    rows = [replace(r, mem_mode="internal_decoupled") for r in layers]

    def bram_left():
        uram, bram = board.usable["uram"], board.usable["bram18"]
        for r in sorted((r for r in rows if r.mem_mode != "external"), key=lambda r: -floors[r.node]["bram18"]):
            f = floors[r.node]
            if 0 < f["uram"] <= uram and f["bram18"] > f["uram"]:
                uram -= f["uram"]
            else:
                bram -= f["bram18"]
        return bram

    for r in sorted((r for r in rows if r.streamable), key=lambda r: -r.bits):
        if bram_left() >= 0:
            break
        r.mem_mode = "external"
    if bram_left() < 0:
        rest = [r for r in rows if r.mem_mode != "external"]
        raise BnnError("%s: with every fully connected layer streamed from DDR, %s still need %d BRAM18 for their "
                       "weights at FINN's best packing (%s), more than the usable %d BRAM18 and %d URAM: use a "
                       "smaller preset or a larger board" % (
                           board.name, ", ".join(r.layer for r in rest), board.usable["bram18"] - bram_left(),
                           ", ".join("%s %d" % (r.layer, floors[r.node]["bram18"]) for r in rest),
                           board.usable["bram18"], board.usable["uram"]))
    return rows


def assign_ram_styles(costs: List[Dict], board, reserved_uram: int = 0) -> Dict[str, str]:
    """``ram_style`` per on-chip layer once the folding is known: URAM for the layers that free the most
    BRAM18, largest first, while the board's usable URAM lasts and a layer takes fewer URAMs than BRAM18s.
    ``reserved_uram``: what the FIFOs and width converters take (``estimates.interconnect``), so that
    layers and interconnect together stay within the margin.

    BRAM is the scarcer pool: the FIFOs and width converters the hardware build adds take it too
    (``estimates.interconnect``; 180 BRAM18 for the paper preset on the KV260), so every layer that can
    move does. ``costs``: ``{"node", "bram18", "uram"}`` per on-chip MVAU, FINN's own estimates of the
    layer in BRAM (ram_style "block") and in URAM ("ultra") at its folding.
    """
    styles = {c["node"]: "auto" for c in costs}
    uram_left = board.usable["uram"] - reserved_uram
    for c in sorted(costs, key=lambda c: -c["bram18"]):
        if 0 < c["uram"] <= uram_left and c["bram18"] > c["uram"]:
            styles[c["node"]] = "ultra"
            uram_left -= c["uram"]
    return styles


def assign_lutram(costs: List[Dict], bram_over: int, lut_left: int) -> List[str]:
    """The on-chip layers whose weights move to LUTRAM (``ram_style`` "distributed"), while the design's
    BRAM18 is ``bram_over`` above its margin: the fewest LUTs per BRAM18 freed first, while the
    ``lut_left`` LUTs below the LUT margin last. ``costs``: ``{"node", "bram18", "lut"}`` per on-chip
    MVAU, FINN's BRAM18 estimate of it in BRAM and the LUTs its weights add in LUTRAM (FINN's MVAU
    LUT model: PE*SIMD*bits per 64 words of depth)."""
    moved = []
    for c in sorted((c for c in costs if c["bram18"] > 0), key=lambda c: c["lut"] / c["bram18"]):
        if bram_over <= 0:
            break
        if c["lut"] <= lut_left:
            moved.append(c["node"])
            bram_over -= c["bram18"]
            lut_left -= c["lut"]
    return moved


def align_streams(rows: List[WeightLayer], folding: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    """New PE/SIMD for streamed layers whose words are not whole bytes (FINN's weight IODMA reads
    bytes): the smallest PE*SIMD at or above the current one, PE dividing MH and SIMD dividing MW.
    ``folding``: node -> {"PE", "SIMD"}; returns only the nodes that change."""
    out = {}
    for r in rows:
        pe, simd = folding[r.node]["PE"], folding[r.node]["SIMD"]
        if r.mem_mode != "external" or (pe * simd * r.weight_bits) % 8 == 0:
            continue
        options = [(p * q, p, q) for p in divisors(r.mh) if p >= pe for q in divisors(r.mw) if q >= simd
                   and (p * q * r.weight_bits) % 8 == 0]
        if options:
            _, p, q = min(options)
            out[r.node] = {"PE": p, "SIMD": q}
    return out


def divisors(n: int) -> List[int]:
    """The PE (or SIMD) values FINN accepts for a dimension of ``n``: its divisors."""
    return [d for d in range(1, int(n) + 1) if n % d == 0]


def check_external(layers: List[WeightLayer], where: str) -> None:
    """Refuse ``external`` on a layer FINN cannot stream (a folding file may set any mem_mode)."""
    for r in layers:
        if r.mem_mode == "external" and not r.streamable:
            raise BnnError("%s: layer %s (%s) has mem_mode external, but FINN streams external weights once per "
                           "image and this conv layer reads its weights %d times per image; only fully connected "
                           "layers can stream" % (where, r.layer, r.node, r.repeats))


# ------------------------------------------------------------------------------------ DDR bound


def port_bytes_per_s(board, clock_mhz: float) -> float:
    """What FINN's Zynq shell moves between DDR and the accelerator per second (all DMAs together)."""
    port = board.axi_port_bits / 8.0 * clock_mhz * 1e6
    return port if board.ddr_bytes_per_s is None else min(port, board.ddr_bytes_per_s)


def ddr_bound(streams: List[Dict], board, clock_mhz: float, in_bytes: int, out_bytes: int) -> Dict:
    """Bytes moved per image and the img/s they allow. ``streams``: ``{"layer", "bytes", "repeats"}`` per
    weight stream (:func:`streamed_weights`); ``in_bytes``/``out_bytes``: one image's packed input and
    output, which share the port with the weights."""
    weight_bytes = sum(int(s["bytes"]) * int(s["repeats"]) for s in streams)
    per_image = weight_bytes + int(in_bytes) + int(out_bytes)
    bw = port_bytes_per_s(board, clock_mhz)
    return {
        "streamed_layers": [s["layer"] for s in streams],
        "weight_bytes_per_image": int(weight_bytes),
        "io_bytes_per_image": int(in_bytes) + int(out_bytes),
        "bytes_per_s": bw,
        "port": "%d-bit S_AXI_HP0 at %g MHz (FINN's Zynq shell; finn.util.basic.pynq_native_port_width)"
                % (board.axi_port_bits, clock_mhz),
        "ddr_bytes_per_s": board.ddr_bytes_per_s,
        "ddr_source": board.ddr_source,
        "fps": bw / per_image if streams else None,
    }


# ------------------------------------------------------------------------------ IODMA weight layout


def external_weight_bytes(weights: np.ndarray, pe: int, simd: int, dtype: str) -> np.ndarray:
    """The uint8 buffer FINN's weight IODMA reads for an MVAU: FINN's ``to_external_tensor(
    InsertIODMA.get_mem_init(W, pe, simd), dtype)``, vectorised.

    ``weights``: the MVAU's (MW, MH) initializer (FINN values: 0/1 for BINARY). get_mem_init orders
    the words by (output fold, input fold) with PE-major, SIMD-minor elements and flips each word;
    to_external_tensor writes each word as a hex number, bytes reversed: element j of the unflipped
    word lands at bits [j*b, (j+1)*b), little-endian, which is ``host.packing.pack``'s layout.
    """
    from bnn_transfer.host.packing import pack

    mw, mh = weights.shape
    if mw % simd or mh % pe:
        raise BnnError("external weights: SIMD %d / PE %d do not divide the %dx%d matrix" % (simd, pe, mw, mh))
    words = (np.asarray(weights).reshape(mw // simd, simd, mh // pe, pe)
             .transpose(2, 0, 3, 1).reshape(-1, pe * simd))
    return np.ascontiguousarray(pack(words, dtype)).reshape(-1)


def weight_dma_names(n_streamed: int) -> List[str]:
    """IODMA instance names ZynqBuild gives the weight streams, in the MVAUs' graph order.

    InsertIODMA puts each weight DMA at the head of the graph (the last layer's first), but after
    ZynqBuild's Floorplan and CreateDataflowPartition the source partitions feed the MVAUs in graph
    order, ahead of the image's, and MakeZYNQProject names them idma0, idma1, ... in that order: the
    first streamed layer's DMA is idma0, the image's idma<n> (FINN's driver names its weight files so).
    """
    return ["idma%d" % i for i in range(n_streamed)]


# ------------------------------------------------------------------------------------ FINN graph



def streamed_weights(model, layer_names: Optional[Sequence[str]] = None) -> List[Dict]:
    """The weight streams of a folded FINN HW graph: one entry per ``external`` MVAU in graph order,
    with the IODMA name ZynqBuild will give it and the bytes that DMA reads (FINN's layout)."""
    from qonnx.custom_op.registry import getCustomOp

    rows = [r for r in mvau_layers(model, layer_names) if r.mem_mode == "external"]
    names = weight_dma_names(len(rows))
    out = []
    for r, dma in zip(rows, names):
        node = model.get_node_from_name(r.node)
        inst = getCustomOp(node)
        pe, simd = int(inst.get_nodeattr("PE")), int(inst.get_nodeattr("SIMD"))
        if (pe * simd * r.weight_bits) % 8:
            raise BnnError("layer %s (%s): PE %d x SIMD %d x %d-bit weights is not a whole number of bytes, which "
                           "FINN's weight IODMA needs" % (r.layer, r.node, pe, simd, r.weight_bits))
        wdt = model.get_tensor_datatype(node.input[1]).name
        data = external_weight_bytes(model.get_initializer(node.input[1]), pe, simd, wdt)
        out.append({"dma": dma, "layer": r.layer, "node": r.node, "repeats": r.repeats, "pe": pe, "simd": simd,
                    "datatype": wdt, "bytes": int(data.size), "data": data})
    return out


def runtime_weight_files(model, driver_dir, layer_names: Optional[Sequence[str]] = None) -> List[Dict]:
    """The runtime-writeable weight memories of a finished hardware build (``model``: the partitioned
    graph FINN's ``step_make_driver`` saved): per memory, the ``.dat`` file FINN's ``MakePYNQDriver``
    wrote under ``driver_dir/runtime_weights``, the AXI-lite interface it loads through and our layer.

    File names follow MakePYNQDriver (``<partition index>_<runtime layer index>_<node>.dat``, counting
    MVAU and Thresholding nodes with runtime_writeable_weights); the interface is the partition's
    instance name and ``s_axilite_<k>``, k counting every AXI-lite interface of the partition in node
    order, as CreateStitchedIP names the stitched IP's ports (which PYNQ lists as ``ip/port``).
    ZynqBuild splits the layers over several partitions (a layer fed by a weight IODMA ends one) and
    renames their nodes, so layers are named by their MVAU's position across the partitions.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    out, mvaus = [], 0
    for sdp_ind, sdp in enumerate(model.graph.node):
        if sdp.op_type != "StreamingDataflowPartition":
            continue
        sdp_inst = getCustomOp(sdp)
        child = ModelWrapper(sdp_inst.get_nodeattr("model"))
        axilite = rt = 0
        for node in child.graph.node:
            inst = getCustomOp(node)
            ports = len(inst.get_verilog_top_module_intf_names()["axilite"])
            is_mvau = node.op_type.startswith("MVAU")
            if (is_mvau or node.op_type.startswith("Thresholding")) and inst.get_nodeattr("runtime_writeable_weights"):
                name = "%d_%d_%s.dat" % (sdp_ind, rt, node.name)
                if not os.path.isfile(os.path.join(str(driver_dir), "runtime_weights", name)):
                    raise BnnError("%s: FINN's driver has no runtime_weights/%s for %s" % (driver_dir, name, node.name))
                layer = (layer_names[mvaus] if is_mvau and layer_names is not None and mvaus < len(layer_names)
                         else node.name)
                out.append({"node": node.name, "layer": layer, "file": name,
                            "ip": "%s/s_axilite_%d" % (sdp_inst.get_nodeattr("instance_name"), axilite)})
                rt += 1
            mvaus += is_mvau
            axilite += ports
    return out
