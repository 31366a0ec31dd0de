"""Our qonnx Transformations on small hand-made graphs (no FINN run)."""

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("qonnx") is None, reason="needs qonnx")


def pad_conv_model(pad_value=-1.0, pads=(0, 0, 1, 1, 0, 0, 1, 1), conv_pads=(0, 0, 0, 0), dtype="BIPOLAR"):
    """x (1,2,4,4) -> Pad(pads, value) -> Conv(3x3, 4 out, pads=conv_pads) -> y."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "w"], ["y"], kernel_shape=[3, 3], pads=list(conv_pads)),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    model.set_initializer("pads", np.array(pads, dtype=np.int64))
    model.set_initializer("value", np.array(pad_value, dtype=np.float32))
    rng = np.random.default_rng(0)
    model.set_initializer("w", rng.choice([-1.0, 1.0], size=(4, 2, 3, 3)).astype(np.float32))
    model.set_tensor_datatype("x", DataType[dtype])
    return model.transform(InferShapes())


def conv_pads(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return list(next(a for a in conv.attribute if a.name == "pads").ints)


def test_minus_one_pad_of_a_bipolar_map_moves_into_the_conv():
    from bnn_transfer.build_fpga.transforms import AbsorbBinaryPad

    model = pad_conv_model(pads=(0, 0, 1, 2, 0, 0, 1, 2))
    model, changed = AbsorbBinaryPad().apply(model)
    assert changed
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert conv_pads(model) == [1, 2, 1, 2]  # ONNX Conv order: top, left, bottom, right
    assert model.graph.node[0].input[0] == "x"
    assert model.get_tensor_shape("y") == [1, 4, 4, 6]  # H 4+1+1-2, W 4+2+2-2
    _, changed = AbsorbBinaryPad().apply(model)
    assert not changed


@pytest.mark.parametrize("kwargs", [
    dict(pad_value=0.0),  # a zero pad is FINN's own FMPadding case
    dict(dtype="UINT8"),  # on pixels, -1 is not the 0 bit
    dict(pads=(0, 1, 1, 1, 0, 0, 1, 1)),  # pads channels
    dict(conv_pads=(1, 1, 1, 1)),  # the conv pads already: two pads do not compose into one attribute
])
def test_other_pads_are_left_alone(kwargs):
    from bnn_transfer.build_fpga.transforms import AbsorbBinaryPad

    model = pad_conv_model(**kwargs)
    before = [n.op_type for n in model.graph.node]
    model, changed = AbsorbBinaryPad().apply(model)
    assert not changed and [n.op_type for n in model.graph.node] == before


def xnor_mvau_model(mw=288, mh=4, n_pos=222, threshold=281):
    """x (1, MW) 0/1 -> FINN's XNOR-popcount MVAU (each row: n_pos weights +1, the rest -1; fires at popcount
    >= threshold) -> y, as step_convert_to_hw leaves conv2 of the demo's backbone."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    node = helper.make_node(
        "MVAU", ["x", "w", "t"], ["y"], domain="finn.custom_op.fpgadataflow", backend="fpgadataflow",
        MW=mw, MH=mh, SIMD=1, PE=1, inputDataType="BINARY", weightDataType="BINARY", outputDataType="BINARY",
        binaryXnorMode=1, noActivation=0, ActVal=0, numInputVectors=[1], accDataType="INT32")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, mw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, mh])])
    model = ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    w = np.zeros((mw, mh), dtype=np.float32)
    w[:n_pos] = 1.0  # FINN stores XNOR weights as 0/1 (1 = +1)
    model.set_initializer("w", w)
    model.set_initializer("t", np.full((mh, 1), threshold, dtype=np.float32))
    model.set_tensor_datatype("x", DataType["BINARY"])
    model.set_tensor_datatype("w", DataType["BINARY"])
    model.set_tensor_datatype("t", DataType["INT32"])
    return model


def test_xnor_thresholds_near_the_top_survive_finns_bit_width_steps():
    pytest.importorskip("finn")
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from qonnx.custom_op.registry import getCustomOp

    from bnn_transfer.build_fpga.steps import _minimize_bit_width
    from bnn_transfer.build_fpga.transforms import WidenXnorAccumulators

    # FINN alone sizes the popcount [0, 288] as [-66, 222]: INT9, whose clipping would cut 281 to 256.
    finn_only = xnor_mvau_model().transform(MinimizeAccumulatorWidth())
    assert getCustomOp(finn_only.graph.node[0]).get_nodeattr("accDataType") == "INT9"
    widened = finn_only.transform(WidenXnorAccumulators())
    assert getCustomOp(widened.graph.node[0]).get_nodeattr("accDataType") == "UINT9"

    class Cfg:
        minimize_bit_width = True

    model = _minimize_bit_width(xnor_mvau_model(), Cfg())
    assert getCustomOp(model.graph.node[0]).get_nodeattr("accDataType") == "UINT9"
    assert model.get_initializer("t").ravel().tolist() == [281.0] * 4
    # A type that already holds the popcount is kept.
    wide = xnor_mvau_model(mw=100, n_pos=100, threshold=90).transform(MinimizeAccumulatorWidth())
    before = getCustomOp(wide.graph.node[0]).get_nodeattr("accDataType")
    assert getCustomOp(wide.transform(WidenXnorAccumulators()).graph.node[0]).get_nodeattr("accDataType") == before
