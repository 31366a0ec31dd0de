"""The integer backbone as a QONNX graph: Brevitas export, then qonnx's tidy-up.

``to_brevitas`` rebuilds the integer layers as Brevitas modules (weights +-1, bias = -threshold,
sign activation) for the exporter. The TorchScript exporter is used on purpose: brevitas 0.13.4's
dynamo exporter drops the float bias of a QuantConv2d/QuantLinear, i.e. our integer thresholds,
without a warning.
"""

import warnings
from typing import List

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantLinear
from brevitas_examples.bnn_pynq.models.common import CommonWeightQuant
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.cleanup import cleanup_model
from torch import nn

from bnn_transfer.host.intlayers import IntLayer
from bnn_transfer.train.models import binary_act

INPUT_DATATYPE = "UINT8"
OUTPUT_DATATYPE = "BIPOLAR"


def to_brevitas(layers: List[IntLayer]) -> nn.Module:
    """The integer backbone as Brevitas modules for QONNX export (same arithmetic, no rounding op)."""
    blocks = []
    prev_kind = None
    for il in layers:
        mods = []
        w = torch.from_numpy(il.weight.astype(np.float32))
        if il.kind == "conv":
            out_ch, in_ch, k, _ = il.weight.shape
            pad = il.padding
            if pad and il.pad_value != 0.0:
                mods.append(nn.ConstantPad2d(pad, il.pad_value))
                pad = 0
            layer = QuantConv2d(
                in_ch, out_ch, k, stride=il.stride, padding=pad, bias=True,
                weight_quant=CommonWeightQuant, weight_bit_width=1,
            )
        else:
            out_ch, in_ch = il.weight.shape
            if prev_kind == "conv":
                mods.append(nn.Flatten(1))
            layer = QuantLinear(in_ch, out_ch, bias=True, weight_quant=CommonWeightQuant, weight_bit_width=1)
        prev_kind = il.kind
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(-torch.from_numpy(il.threshold.astype(np.float32)))
        mods += [layer, binary_act()]
        if il.pool is not None:
            mods.append(nn.MaxPool2d(*il.pool))
        blocks.append(nn.Sequential(*mods))
    return nn.Sequential(*blocks).eval()


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
