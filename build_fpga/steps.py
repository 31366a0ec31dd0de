"""Our steps in FINN's build (``DataflowBuildConfig.steps`` takes callables beside FINN's step names).

Each step is ``step(model, cfg) -> model``; FINN saves its output as
``intermediate_models/<function name>.onnx``. A step that fails raises through :func:`fail` so the
build ends with one line (``finn_flow.run_dataflow``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from .transforms import AbsorbBinaryPad, MapWideLayersToDsp

# The message of the step that failed last: build_dataflow_cfg catches every exception and returns -1
# (it re-raises only under pytest), so the one line travels beside it.
STEP_ERRORS: List[str] = []


def fail(msg: str):
    """Abort the build from one of our steps with a one-line message (a FINNUserError is logged by
    FINN as one line without a traceback)."""
    from finn.util.exception import FINNUserError

    STEP_ERRORS.append(msg)
    raise FINNUserError(msg)


def step_bnn_absorb_binary_pad(model, cfg):
    """-1 padding of binary maps moved into the consuming Conv (see :class:`AbsorbBinaryPad`)."""
    return model.transform(AbsorbBinaryPad())


def step_bnn_dsp_layers(model, cfg):
    """The 8-bit first layer onto DSPs (see :class:`MapWideLayersToDsp`); after step_convert_to_hw."""
    return model.transform(MapWideLayersToDsp())


def step_bnn_check_partition(model, cfg):
    """After step_create_dataflow_partition (``model`` is now the dataflow child): everything but the
    leading NCHW->NHWC Transpose must be in the single accelerator partition."""
    from qonnx.core.modelwrapper import ModelWrapper

    parent = ModelWrapper(str(Path(cfg.output_dir) / "intermediate_models" / "dataflow_parent.onnx"))
    ops = [n.op_type for n in parent.graph.node]
    if ops not in (["StreamingDataflowPartition"], ["Transpose", "StreamingDataflowPartition"]):
        fail("%s: FINN left layers outside the accelerator: %s" % (cfg.output_dir, ", ".join(ops)))
    stray = [n.op_type for n in model.graph.node if not n.domain.startswith("finn.custom_op.fpgadataflow")]
    if stray:
        fail("%s: non-hardware nodes in the dataflow partition: %s" % (cfg.output_dir, ", ".join(stray)))
    return model

def step_bnn_io_shapes(model, cfg):
    """Write report/io_shapes.json: what FINN's driver puts in settings.json's io_shape_dict."""
    (Path(cfg.output_dir) / "report" / "io_shapes.json").write_text(json.dumps(io_shapes(model), indent=2))
    return model

def io_shapes(model) -> Dict:
    """The accelerator's I/O as ``finn.util.basic.get_driver_shapes`` derives it after ZynqBuild.

    ``model`` is the dataflow child graph (input NHWC). Normal shapes are the child's graph I/O, folded
    shapes come from the first/last HW node, packed shapes from packing a dummy folded tensor, exactly
    as get_driver_shapes does; the IODMA instance names are ZynqBuild's ``idma0``/``odma0``.
    """
    from finn.util.data_packing import finnpy_to_packed_bytearray
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.util.basic import gen_finn_dt_tensor

    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    first, last = model.find_consumer(iname), model.find_producer(oname)
    idt, odt = model.get_tensor_datatype(iname), model.get_tensor_datatype(oname)
    ifold = tuple(int(v) for v in getCustomOp(first).get_folded_input_shape())
    ofold = tuple(int(v) for v in getCustomOp(last).get_folded_output_shape())
    ipack = finnpy_to_packed_bytearray(gen_finn_dt_tensor(idt, ifold), idt).shape
    opack = finnpy_to_packed_bytearray(gen_finn_dt_tensor(odt, ofold), odt).shape
    return {
        "idt": ["DataType['%s']" % idt.name],
        "idma_names": ["idma0"],
        "ishape_normal": [list(model.get_tensor_shape(iname))],
        "ishape_folded": [list(ifold)],
        "ishape_packed": [list(ipack)],
        "odt": ["DataType['%s']" % odt.name],
        "odma_names": ["odma0"],
        "oshape_normal": [list(model.get_tensor_shape(oname))],
        "oshape_folded": [list(ofold)],
        "oshape_packed": [list(opack)],
        "num_inputs": 1,
        "num_outputs": 1,
    }

def flow_steps(hw_codegen: bool = False) -> List:
    """FINN's estimate_only_dataflow_steps with ours inserted (names are strings, ours callables)."""
    from finn.builder.build_dataflow_config import estimate_only_dataflow_steps

    steps: List = []
    for name in estimate_only_dataflow_steps:
        if name == "step_streamline":
            steps.append(step_bnn_absorb_binary_pad)
        steps.append(name)
        if name == "step_convert_to_hw":
            steps.append(step_bnn_dsp_layers)
        if name == "step_create_dataflow_partition":
            steps.append(step_bnn_check_partition)
    steps.append(step_bnn_io_shapes)
    if hw_codegen:
        steps.append("step_hw_codegen")
    return steps
