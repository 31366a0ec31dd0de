"""Which layers' weights stay on chip and which stream from DDR, and what streaming costs.

FINN's MVAU has three ways to hold its weights: inside the HLS code (``internal_embedded``), in a
separate on-chip memory streamer (``internal_decoupled``; BRAM, or URAM with ``ram_style``
"ultra"), or nowhere on chip (``external``): then an IODMA in the Zynq shell reads the packed
matrix from DDR and streams it into the layer, once per image. The paper's AlexNet holds ~58 Mbit
of weights, fc1 (9216x4096) and fc2 (4096x4096) 54.5 Mbit of it, against ~5 Mbit of BRAM on a
KV260 and ~9 Mbit of BRAM + ~21 Mbit of URAM on a ZCU104 (FINN's 80% margins).

:func:`plan` decides per layer, before folding, from the board's usable BRAM18/URAM: the largest
fully connected layers stream until the rest fits on chip, the largest on-chip layers in URAM where
the board has it. FINN's estimates after folding then check the guess like any other design.

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

import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from host.errors import BnnError

BRAM18_BITS = 18 * 1024
# FINN packs PE*SIMD weights per memory word; for 1-bit weights and power-of-two PE*SIMD a URAM's
# 72-bit x 4096 words hold 64 x 4096 of them (matrixvectoractivation.uram_estimation).
URAM_WEIGHT_BITS = 64 * 4096
# Share of the usable BRAM18 that weights may take in the plan: FINN's estimates count the thresholds
# too, and FIFOs and width converters come on top (build_fpga/FINN_NOTES.md: keep BRAM margin).
BRAM_FILL = 0.85


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


def plan(layers: List[WeightLayer], board) -> List[WeightLayer]:
    """Decide ``mem_mode``/``ram_style`` per layer for ``board`` (a copy; the input is not changed).

    Stream none, then the largest fully connected layer, then the two largest, ... and take the first
    plan whose on-chip layers fit: the largest go to URAM while it lasts (``ram_style`` "ultra"), the
    rest to BRAM, within the usable counts (BRAM at BRAM_FILL). BnnError when even with every FC layer
    streamed the rest does not fit.
    """
    fcs = sorted((r for r in layers if r.streamable), key=lambda r: -r.bits)
    for k in range(len(fcs) + 1):
        streamed = {r.node for r in fcs[:k]}
        rows = [replace(r, mem_mode="external" if r.node in streamed else "internal_decoupled", ram_style="auto")
                for r in layers]
        uram_left = board.usable["uram"]
        bram_bits = 0
        for r in sorted((r for r in rows if r.mem_mode != "external"), key=lambda r: -r.bits):
            need = math.ceil(r.bits / URAM_WEIGHT_BITS)
            if need <= uram_left:
                r.ram_style = "ultra"
                uram_left -= need
            else:
                bram_bits += r.bits
        if bram_bits <= board.usable["bram18"] * BRAM18_BITS * BRAM_FILL:
            return rows
    raise BnnError("%s: with every fully connected layer streamed from DDR, %s still need %.1f Mbit of BRAM for "
                   "their weights, more than the %.1f Mbit a plan may use (%d%% of the %d usable BRAM18, the rest is "
                   "for thresholds and FIFOs): use a smaller preset or a larger board"
                   % (board.name, ", ".join(r.layer for r in rows if r.mem_mode != "external"
                                            and r.ram_style != "ultra"), bram_bits / 1e6,
                      board.usable["bram18"] * BRAM18_BITS * BRAM_FILL / 1e6, round(BRAM_FILL * 100),
                      board.usable["bram18"]))


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
    from host.packing import pack

    mw, mh = weights.shape
    if mw % simd or mh % pe:
        raise BnnError("external weights: SIMD %d / PE %d do not divide the %dx%d matrix" % (simd, pe, mw, mh))
    words = (np.asarray(weights).reshape(mw // simd, simd, mh // pe, pe)
             .transpose(2, 0, 3, 1).reshape(-1, pe * simd))
    return np.ascontiguousarray(pack(words, dtype)).reshape(-1)


def weight_dma_names(n_streamed: int) -> List[str]:
    """IODMA instance names ZynqBuild gives the weight streams, in the MVAUs' graph order.

    InsertIODMA puts each weight DMA at the head of the graph (so the last layer's ends up first),
    SortGraph keeps that order among the source nodes, ahead of the image DMA, and MakeZYNQProject
    names the source partitions idma0, idma1, ... in graph order: the image is idma<n>.
    """
    return ["idma%d" % (n_streamed - 1 - i) for i in range(n_streamed)]


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
