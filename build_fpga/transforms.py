"""Graph transformations on our QONNX graphs, in qonnx's ``Transformation`` form
(``apply(model) -> (model, graph_modified)``), used by our FINN build steps."""

from __future__ import annotations

from qonnx.core.datatype import DataType
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes


class AbsorbBinaryPad(Transformation):
    """Pad(value=-1) on a BIPOLAR map -> padding of the Conv that consumes it.

    The export contract pads binary maps with -1 (the 0 bit; ``paper`` preset). FINN keeps such a Pad
    as a plain ONNX Pad: streamlining turns its input into BINARY {0,1} but leaves the constant -1
    (python execution then differs from QONNX), and InferFMPadding only converts zero-valued Pads
    with an explicit axes input. A Conv's own padding on a binary input, however, is lowered to
    Im2Col/FMPadding on the BINARY stream, which inserts 0 bits, i.e. exactly -1. After this the
    tidy graph alone is not QONNX-exact (ONNX Conv pads with 0); the streamlined graph and the
    hardware are (tested). No-op for graphs without such pads (tiny, z2).
    """

    def apply(self, model):
        for node in model.graph.node:
            conv = self._absorbable(model, node)
            if conv is None:
                continue
            pads = [int(v) for v in model.get_initializer(node.input[1])]
            next(a for a in conv.attribute if a.name == "pads").ints[:] = [pads[2], pads[3], pads[6], pads[7]]
            conv.input[0] = node.input[0]
            model.graph.node.remove(node)
            return model.transform(InferShapes()), True  # the node list changed: start over
        return model, False

    @staticmethod
    def _absorbable(model, node):
        """The consuming Conv when ``node`` is a spatial -1 Pad of a BIPOLAR map into an unpadded Conv."""
        if node.op_type != "Pad" or len(node.input) < 3:
            return None
        value = model.get_initializer(node.input[2])
        pads = model.get_initializer(node.input[1])
        conv = model.find_consumer(node.output[0])
        if value is None or pads is None or float(value) != -1.0 or conv is None or conv.op_type != "Conv":
            return None
        if model.get_tensor_datatype(node.input[0]) != DataType["BIPOLAR"] or len(pads) != 8:
            return None
        if pads[0] or pads[1] or pads[4] or pads[5]:
            return None  # pads batch or channels: not a spatial pad
        if any(next(a for a in conv.attribute if a.name == "pads").ints):
            return None
        return conv


class SetWeightMemory(Transformation):
    """Set node attributes of MVAUs, ``{node name: {attribute: value}}``: the weight memory our steps
    decide (``mem_mode``, ``ram_style``; ``build_fpga/external_weights.py``) and the PE/SIMD that make a
    weight stream whole bytes."""

    def __init__(self, attrs):
        super().__init__()
        self.attrs = attrs

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp

        for n in model.graph.node:
            for name, value in self.attrs.get(n.name, {}).items():
                getCustomOp(n).set_nodeattr(name, value)
        return model, False


class MapWideLayersToDsp(Transformation):
    """MVAUs with multi-bit inputs and +-1 weights (the 8-bit first layer) -> FINN's DSP-based RTL MVAU.

    In LUTs, FINN's HLS MVAU spends ~30 LUTs per 8-bit x 2-bit product (build_fpga/FINN_NOTES.md: conv1
    is 40-60% of z2's LUTs) while the board's DSP48 slices sit idle. FINN's MVAU_rtl maps the products
    onto DSPs (finn-rtllib mvu.sv packs several narrow products per DSP), but only without embedded
    thresholds, for signed weights of >= 2 bits, and on DSP48E1 only for narrow-range weights
    (``specialize_layers._mvu_rtl_possible``). So, on the converted HW graph (after
    ``step_convert_to_hw``): the thresholds move into a standalone ``Thresholding`` node that reads the
    MVAU's accumulator, the +-1 weights are typed INT2 (their narrow range: no -2), which
    ``step_minimize_bit_width`` would choose anyway, and the MVAU asks for the RTL variant. The
    function is unchanged: ``Thresholding`` computes ``acc >= t`` exactly as the MVAU's thresholds did.
    XNOR-popcount layers stay in LUTs (no multiplier to save). Where FINN still declines the RTL
    variant, ``step_specialize_layers`` falls back to the HLS MVAU (same function, LUT cost).
    """

    def apply(self, model):
        from onnx import helper
        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if node.op_type != "MVAU" or len(node.input) < 3:
                continue
            mvau = getCustomOp(node)
            if mvau.get_nodeattr("binaryXnorMode") or mvau.get_nodeattr("noActivation"):
                continue
            if model.get_tensor_datatype(node.input[1]) != DataType["BIPOLAR"]:
                continue
            thresholds, out = node.input[2], node.output[0]
            acc = model.make_new_valueinfo_name()
            model.set_tensor_shape(acc, model.get_tensor_shape(out))
            model.set_tensor_datatype(acc, DataType[mvau.get_nodeattr("accDataType")])
            thresholding = helper.make_node(
                "Thresholding", [acc, thresholds], [out], domain="finn.custom_op.fpgadataflow",
                backend="fpgadataflow", name="Thresholding_" + node.name,
                NumChannels=int(mvau.get_nodeattr("MH")), PE=1,
                numSteps=int(model.get_tensor_shape(thresholds)[1]),
                inputDataType=mvau.get_nodeattr("accDataType"),
                weightDataType=model.get_tensor_datatype(thresholds).name,
                outputDataType=mvau.get_nodeattr("outputDataType"),
                numInputVectors=list(mvau.get_nodeattr("numInputVectors")),
                ActVal=int(mvau.get_nodeattr("ActVal")))
            del node.input[2]
            node.output[0] = acc
            mvau.set_nodeattr("noActivation", 1)
            mvau.set_nodeattr("outputDataType", mvau.get_nodeattr("accDataType"))
            mvau.set_nodeattr("weightDataType", "INT2")
            model.set_tensor_datatype(node.input[1], DataType["INT2"])
            mvau.set_nodeattr("preferred_impl_style", "rtl")
            mvau.set_nodeattr("resType", "dsp")
            model.graph.node.insert(list(model.graph.node).index(node) + 1, thresholding)
            return model, True  # the node list changed: start over
        return model, False


class WidenXnorAccumulators(Transformation):
    """An XNOR-popcount MVAU's accumulator type made to hold its popcount, ``[0, MW]``.

    finn-plus 1.6.1's ``MinimizeAccumulatorWidth`` sizes a ``binaryXnorMode`` MVAU as the dot product
    of its bipolar weights with 0/1 inputs, ``[-#negative, #positive]`` per row: for conv2 of a
    ``small`` backbone (MW 288, at most 222 positive weights in a row) INT9, ``[-256, 255]``. But the
    layer accumulates the popcount of matching bits, up to MW, and ``RoundAndClipThresholds`` then
    clips a threshold of 281 (of 288) to 256: the layer fires on popcounts 256..280 where the network
    does not (the bundle's check refused it). Run between the accumulator sizing and the clipping; an
    accumulator type that already holds ``[0, MW]`` is kept.
    """

    def apply(self, model):
        import math

        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if not node.op_type.startswith("MVAU"):
                continue
            mvau = getCustomOp(node)
            if not mvau.get_nodeattr("binaryXnorMode"):
                continue
            mw = int(mvau.get_nodeattr("MW"))
            acc = DataType[mvau.get_nodeattr("accDataType")]
            if acc.min() > 0 or acc.max() < mw:
                mvau.set_nodeattr("accDataType", "UINT%d" % math.ceil(math.log2(mw + 1)))
        return model, False


class Despecialize(Transformation):
    """FINN's ``X_hls``/``X_rtl`` nodes turned back into their ``X`` base ops.

    Specialized nodes execute only in cppsim/rtlsim (Vitis HLS / Vivado), but their base classes
    (MVAU, ConvolutionInputGenerator, Pool, FMPadding, ...) have a python ``execute_node`` and read
    the same attributes and initializers, so the folded, bit-width-minimized graph can be checked
    in python. Folding attributes do not change what a node computes.
    """

    def apply(self, model):
        for node in model.graph.node:
            despecialize_node(node)
        return model, False


def despecialize_node(node) -> None:
    """One node of :class:`Despecialize`, in place (the cppsim rung runs single nodes in python)."""
    if node.domain.startswith("finn.custom_op.fpgadataflow."):
        node.domain = "finn.custom_op.fpgadataflow"
        for suffix in ("_hls", "_rtl"):
            if node.op_type.endswith(suffix):
                node.op_type = node.op_type[: -len(suffix)]
