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
