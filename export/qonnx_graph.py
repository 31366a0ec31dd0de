"""The integer backbone as a QONNX graph: Brevitas export, then qonnx's tidy-up.

The TorchScript exporter is used on purpose: brevitas 0.13.4's dynamo exporter drops the float
bias of a QuantConv2d/QuantLinear, i.e. our integer thresholds, without a warning.
"""

import warnings

import numpy as np
import torch
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.cleanup import cleanup_model

from train.freeze import to_brevitas

INPUT_DATATYPE = "UINT8"
OUTPUT_DATATYPE = "BIPOLAR"


def export_qonnx_backbone(layers, input_size, path) -> ModelWrapper:
    """Write ``path`` (QONNX, NCHW float input holding uint8 values, +-1 output) and return it."""
    from brevitas.export import export_qonnx

    module = to_brevitas(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(module, torch.zeros(1, 3, input_size, input_size), export_path=path, dynamo=False)
    model = cleanup_model(ModelWrapper(path))
    # No quantizer on the input: the image bytes are the integers the first layer multiplies.
    model.set_tensor_datatype(model.graph.input[0].name, DataType[INPUT_DATATYPE])
    model.save(path)
    return model


def layer_outputs(model: ModelWrapper):
    """Tensor names holding each frozen block's output, in order (after its max pool, if any).

    A block's activation is the BipolarQuant whose input is computed (weight quantizers read
    initializers).
    """
    names = []
    for node in model.graph.node:
        if node.op_type != "BipolarQuant" or model.get_initializer(node.input[0]) is not None:
            continue
        out = node.output[0]
        consumer = model.find_consumer(out)
        if consumer is not None and consumer.op_type == "MaxPool":
            out = consumer.output[0]
        names.append(out)
    return names


def execute(model: ModelWrapper, x_nchw: np.ndarray, all_layers=False):
    """Run one image batch through qonnx's reference executor, image by image (batch 1 graph)."""
    from qonnx.core.onnx_exec import execute_onnx

    inp = model.graph.input[0].name
    names = layer_outputs(model) if all_layers else [model.graph.output[0].name]
    outs = [[] for _ in names]
    for i in range(x_nchw.shape[0]):
        ctx = execute_onnx(model, {inp: x_nchw[i: i + 1].astype(np.float32)}, return_full_exec_context=all_layers)
        for j, n in enumerate(names):
            outs[j].append(ctx[n])
    outs = [np.concatenate(o, axis=0) for o in outs]
    return outs if all_layers else outs[0]
