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
    from build_fpga.transforms import AbsorbBinaryPad

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
    from build_fpga.transforms import AbsorbBinaryPad

    model = pad_conv_model(**kwargs)
    before = [n.op_type for n in model.graph.node]
    model, changed = AbsorbBinaryPad().apply(model)
    assert not changed and [n.op_type for n in model.graph.node] == before
