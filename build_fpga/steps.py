"""Our steps in FINN's build (``DataflowBuildConfig.steps`` takes callables beside FINN's step names).

Each step is ``step(model, cfg) -> model``; FINN saves its output as
``intermediate_models/<function name>.onnx``. A step that fails raises through :func:`fail` so the
build ends with one line (``finn_flow.run_dataflow``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from host.errors import BnnError

from .transforms import AbsorbBinaryPad, SetWeightMemory

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


def external_weights_steps(board, layer_names=None) -> Tuple:
    """Our two steps around FINN's folding for weights in DDR (``external_weights.py``), bound to
    ``board`` and our layer names (for messages).

    ``step_bnn_external_weights`` (before folding): each MVAU's mem_mode/ram_style from
    :func:`~build_fpga.external_weights.plan`, written to report/external_weights_plan.json.
    ``step_bnn_check_external`` (after a folding file was applied, which may set any mem_mode): no
    conv layer streams, and every stream is whole bytes per word, as FINN's weight IODMA needs.
    """
    from .external_weights import check_external, mvau_layers, plan

    def step_bnn_external_weights(model, cfg):
        try:
            rows = plan(mvau_layers(model, layer_names), board)
        except BnnError as e:
            fail(str(e))
        report = Path(cfg.output_dir) / "report"
        report.mkdir(parents=True, exist_ok=True)
        (report / "external_weights_plan.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
        return model.transform(SetWeightMemory(rows))

    def step_bnn_check_external(model, cfg):
        where = str(cfg.folding_config_file or cfg.output_dir)
        try:
            check_external(mvau_layers(model, layer_names), where)
        except BnnError as e:
            fail(str(e))
        return model

    return step_bnn_external_weights, step_bnn_check_external


def step_bnn_io_shapes(model, cfg):
    """Write report/io_shapes.json (what FINN's driver puts in settings.json's io_shape_dict) and
    report/external_weights.json (the weight streams of the folded graph, without their bytes)."""
    from .external_weights import streamed_weights

    report = Path(cfg.output_dir) / "report"
    try:
        streams = streamed_weights(model)
    except BnnError as e:
        fail("%s: %s" % (cfg.folding_config_file or cfg.output_dir, e))
    (report / "io_shapes.json").write_text(json.dumps(io_shapes(model, len(streams)), indent=2))
    (report / "external_weights.json").write_text(json.dumps(
        [{k: v for k, v in s.items() if k != "data"} for s in streams], indent=2))
    return model

def io_shapes(model, n_weight_streams: int = 0) -> Dict:
    """The accelerator's I/O as ``finn.util.basic.get_driver_shapes`` derives it after ZynqBuild.

    ``model`` is the dataflow child graph (input NHWC). Normal shapes are the child's graph I/O, folded
    shapes come from the first/last HW node, packed shapes from packing a dummy folded tensor, exactly
    as get_driver_shapes does; the IODMA instance names are ZynqBuild's: the weight streams take
    ``idma0`` .. ``idma<n-1>`` (:func:`~build_fpga.external_weights.weight_dma_names`), the image
    ``idma<n>``, the output ``odma0``.
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
        "idma_names": ["idma%d" % n_weight_streams],
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

def flow_steps(hw_codegen: bool = False, board=None, layer_names=None) -> List:
    """FINN's estimate_only_dataflow_steps with ours inserted (names are strings, ours callables).
    With ``board``, the per-layer weight memory is planned for it (:func:`external_weights_steps`)."""
    from finn.builder.build_dataflow_config import estimate_only_dataflow_steps

    weights = external_weights_steps(board, layer_names) if board is not None else None
    steps: List = []
    for name in estimate_only_dataflow_steps:
        if name == "step_streamline":
            steps.append(step_bnn_absorb_binary_pad)
        steps.append(name)
        if name == "step_create_dataflow_partition":
            steps.append(step_bnn_check_partition)
        if name == "step_specialize_layers" and weights:
            steps.append(weights[0])
        if name == "step_apply_folding_config" and weights:
            steps.append(weights[1])
    steps.append(step_bnn_io_shapes)
    if hw_codegen:
        steps.append("step_hw_codegen")
    return steps
