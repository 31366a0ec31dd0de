"""Our steps in FINN's build (``DataflowBuildConfig.steps`` takes callables beside FINN's step names).

Each step is ``step(model, cfg) -> model``; FINN saves its output as
``intermediate_models/<function name>.onnx``. A step that fails raises through :func:`fail` so the
build ends with one line (``finn_flow.run_dataflow``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from bnn_transfer.host.errors import BnnError

from .transforms import AbsorbBinaryPad, MapWideLayersToDsp, SetWeightMemory, WidenXnorAccumulators


def fail(msg: str):
    """Abort the build from one of our steps with a one-line message: FINN logs a FINNUserError as one
    line, ``FINN ERROR: <msg>``, without a traceback, which ``finn_flow.run_dataflow`` reports."""
    from finn.util.exception import FINNUserError

    raise FINNUserError(msg)


def step_bnn_absorb_binary_pad(model, cfg):
    """-1 padding of binary maps moved into the consuming Conv (see :class:`AbsorbBinaryPad`)."""
    return model.transform(AbsorbBinaryPad())


def step_bnn_dsp_layers(model, cfg):
    """The 8-bit first layer onto DSPs (see :class:`MapWideLayersToDsp`); after step_convert_to_hw."""
    return model.transform(MapWideLayersToDsp())


def _minimize_bit_width(model, cfg):
    """finn.builder.build_dataflow_steps._minimize_bit_width with :class:`WidenXnorAccumulators` between
    FINN's accumulator sizing and its threshold clipping (which would cut XNOR thresholds at the
    undersized type: the clipping is inside FINN's step, so the step is repeated here, transform for
    transform)."""
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    if cfg.minimize_bit_width:
        model = model.transform(MinimizeWeightBitWidth(), apply_to_subgraphs=True)
        model = model.transform(MinimizeAccumulatorWidth(), apply_to_subgraphs=True)
    model = model.transform(WidenXnorAccumulators(), apply_to_subgraphs=True)
    model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    model = model.transform(RoundAndClipThresholds(), apply_to_subgraphs=True)
    model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    if cfg.minimize_bit_width:
        model = model.transform(MinimizeWeightBitWidth(), apply_to_subgraphs=True)
        model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    return model


def step_bnn_minimize_bit_width_initial(model, cfg):
    """FINN's step_minimize_bit_width_initial, XNOR accumulators widened (:func:`_minimize_bit_width`)."""
    return _minimize_bit_width(model, cfg)


def step_bnn_minimize_bit_width(model, cfg):
    """FINN's step_minimize_bit_width (without its cppsim verification, which our flow does not
    configure), XNOR accumulators widened (:func:`_minimize_bit_width`)."""
    return _minimize_bit_width(model, cfg)


# FINN's steps that this flow runs as its own versions
REPLACED_STEPS = {"step_minimize_bit_width_initial": step_bnn_minimize_bit_width_initial,
                  "step_minimize_bit_width": step_bnn_minimize_bit_width}


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


# What FINN's step_target_fps_parallelization exports as auto_folding_config.json (its list, inline there).
FOLDING_ATTRS = ("PE", "SIMD", "EmbFold", "SeqFold", "parallel_window", "ram_style", "ram_style_thresholds",
                 "ram_style_mask", "depth", "impl_style", "resType", "mac_resource", "mem_mode",
                 "runtime_writeable_weights", "depth_trigger_uram", "depth_trigger_bram")
FOLDING_CONFIG = "bnn_folding_config.json"  # in FINN's report/: the folding as estimated, for --folding


def external_weights_steps(board, layer_names=None) -> Tuple:
    """Our steps for weights in DDR (``external_weights.py``), bound to ``board`` and our layer names.

    ``step_bnn_external_weights`` (before folding): which MVAUs stream (mem_mode external), from
    :func:`~build_fpga.external_weights.plan` on FINN's fewest BRAM18/URAM per layer
    (:func:`~build_fpga.external_weights.memory_floor`); report/external_weights_plan.json.
    ``step_bnn_weight_memory`` (after folding and any folding file, which may set any mem_mode): no
    conv layer streams; without a folding file, streams are made whole bytes per word and the
    on-chip layers that save the most BRAM go to URAM, then, while BRAM is over its margin, the ones
    whose weights cost the fewest LUTs per BRAM18 to LUTRAM (FINN's estimates at this folding); with one,
    a stream that is not whole bytes is refused. Writes the final folding (FOLDING_CONFIG).
    ``step_bnn_io_shapes`` (last): :func:`io_shapes` and report/external_weights.json.
    """
    from finn.util.config import extract_model_config_to_json
    from qonnx.custom_op.registry import getCustomOp

    from .estimates import interconnect, node_resources, resource_totals
    from .external_weights import (
        align_streams,
        assign_lutram,
        assign_ram_styles,
        check_external,
        divisors,
        memory_floor,
        mvau_layers,
        plan,
        streamed_weights,
    )

    def step_bnn_external_weights(model, cfg):
        layers = mvau_layers(model, layer_names)
        part = cfg._resolve_fpga_part()
        floors = {r.node: memory_floor(getCustomOp(model.get_node_from_name(r.node)), part) for r in layers}
        try:
            rows = plan(layers, board, floors)
        except BnnError as e:
            fail(str(e))
        report = Path(cfg.output_dir) / "report"
        report.mkdir(parents=True, exist_ok=True)
        (report / "external_weights_plan.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
        return model.transform(SetWeightMemory({r.node: {"mem_mode": r.mem_mode} for r in rows}))

    def step_bnn_weight_memory(model, cfg):
        where = str(cfg.folding_config_file or cfg.output_dir)
        rows = mvau_layers(model, layer_names)
        insts = {r.node: getCustomOp(model.get_node_from_name(r.node)) for r in rows}
        folding = {n: {"PE": i.get_nodeattr("PE"), "SIMD": i.get_nodeattr("SIMD")} for n, i in insts.items()}
        try:
            check_external(rows, where)
            aligned = align_streams(rows, folding)
        except BnnError as e:
            fail(str(e))
        if cfg.folding_config_file is not None:
            for node in aligned:
                r = next(r for r in rows if r.node == node)
                fail("%s: layer %s (%s) streams PE %d x SIMD %d x %d-bit weights per word, not whole bytes, which "
                     "FINN's weight IODMA needs (e.g. PE %d, SIMD %d)" % (
                         where, r.layer, node, folding[node]["PE"], folding[node]["SIMD"], r.weight_bits,
                         aligned[node]["PE"], aligned[node]["SIMD"]))
        elif any(r.mem_mode == "external" for r in rows):
            # URAM only where BRAM runs short, i.e. in designs that already stream weights: the bitstream
            # cannot initialise URAM on UltraScale+, so its weights load over AXI-lite when the host opens
            # the overlay, one more thing that can go wrong that a design fitting in BRAM does without.
            part = cfg._resolve_fpga_part()
            model = _pack_weights(model, part)
            costs = []
            for r in rows:
                if r.mem_mode == "external":
                    continue
                inst, cost = insts[r.node], {"node": r.node}
                for style, key, fn in (("block", "bram18", "bram_estimation"), ("ultra", "uram", "uram_estimation")):
                    inst.set_nodeattr("ram_style", style)
                    cost[key] = int(getattr(inst, fn)(part))
                inst.set_nodeattr("ram_style", r.ram_style)
                costs.append(cost)
            fifos = resource_totals(interconnect(model, board, _fifo(cfg)))["uram"] if board.uram else 0
            styles = assign_ram_styles(costs, board, fifos)
            model = model.transform(SetWeightMemory(
                {n: dict(aligned.get(n, {}), **({"ram_style": styles[n]} if n in styles else {})) for n in insts}))
            model = _weights_to_lutram(model, part, _fifo(cfg))
        # FINN generates URAM weight memories only as runtime-writeable ones on UltraScale+ (MVAU's
        # generate_infra_hdl asserts it), whoever chose "ultra": our assignment or a folding file.
        model = model.transform(SetWeightMemory({r.node: {"runtime_writeable_weights": 1} for r in mvau_layers(model)
                                                 if r.ram_style == "ultra" and r.mem_mode == "internal_decoupled"}))
        extract_model_config_to_json(model, Path(cfg.output_dir) / "report" / FOLDING_CONFIG, FOLDING_ATTRS)
        return model

    def _pack_weights(model, part):
        """Per on-chip HLS MVAU fed by a window generator, the PE x SIMD with FINN's fewest BRAM18 (then
        LUTs) among those no slower than the design's slowest node: SetFolding picks the narrowest
        folding per target and ignores how its words pack into BRAM18 (the paper preset's conv4 takes 90
        BRAM18 at PE 2 x SIMD 128, 72 at PE 3 x SIMD 108). The generator follows the MVAU's SIMD as in
        :func:`~build_fpga.folding.knobs`."""
        import math

        from finn.util.basic import MAX_ALLOWED_AP_INT_W

        limit = max(int(i.get_exp_cycles()) for i in _hw_nodes(model))
        for r in mvau_layers(model):
            node = model.get_node_from_name(r.node)
            src = model.find_producer(node.input[0])
            if r.mem_mode == "external" or node.op_type != "MVAU_hls" or src is None \
                    or not src.op_type.startswith("ConvolutionInputGenerator"):
                continue
            inst, swg = getCustomOp(node), getCustomOp(src)
            channels = int(swg.get_nodeattr("IFMChannels"))
            start = ((inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")),
                     (swg.get_nodeattr("SIMD"), swg.get_nodeattr("parallel_window")))
            cands = [(int(inst.bram_estimation(part)), int(inst.lut_estimation(part)) + int(swg.lut_estimation(part)),
                      start)]
            for pe in divisors(r.mh):
                for simd in divisors(r.mw):
                    inst.set_nodeattr("PE", pe)
                    inst.set_nodeattr("SIMD", simd)
                    swg.set_nodeattr("SIMD", math.gcd(simd, channels))
                    swg.set_nodeattr("parallel_window", 0)
                    if max(inst.get_exp_cycles(), swg.get_exp_cycles()) > limit or max(
                            inst.get_instream_width(0), inst.get_instream_width(1)) > MAX_ALLOWED_AP_INT_W:
                        continue
                    cands.append((int(inst.bram_estimation(part)),
                                  int(inst.lut_estimation(part)) + int(swg.lut_estimation(part)),
                                  ((pe, simd), (math.gcd(simd, channels), 0))))
            (pe, simd), (wsimd, pw) = min(cands, key=lambda c: c[:2])[2]
            for a, v in (("PE", pe), ("SIMD", simd)):
                inst.set_nodeattr(a, v)
            for a, v in (("SIMD", wsimd), ("parallel_window", pw)):
                swg.set_nodeattr(a, v)
        return model

    def _hw_nodes(model):
        return [getCustomOp(n) for n in model.graph.node if n.domain.startswith("finn.custom_op.fpgadataflow")]

    def _fifo(cfg):
        return cfg.auto_fifo_strategy.value  # the FIFOs the hardware build will make (estimates.interconnect)

    def _weights_to_lutram(model, part, fifo):
        """LUTRAM for on-chip layers while the design's BRAM18 (layers, FIFOs, DWCs, DMAs) is over its
        margin (:func:`~build_fpga.external_weights.assign_lutram`, FINN's estimates at this folding)."""
        total = resource_totals([node_resources(i, part) for i in _hw_nodes(model)] + interconnect(model, board, fifo))
        costs = []
        for r in mvau_layers(model):
            inst = getCustomOp(model.get_node_from_name(r.node))
            if r.mem_mode == "external" or r.ram_style == "ultra":
                continue
            cost = {"node": r.node, "bram18": int(inst.bram_estimation(part))}
            lut = int(inst.lut_estimation(part))
            inst.set_nodeattr("ram_style", "distributed")
            cost["lut"] = int(inst.lut_estimation(part)) - lut
            inst.set_nodeattr("ram_style", r.ram_style)
            costs.append(cost)
        moved = assign_lutram(costs, total["bram18"] - board.usable["bram18"], board.usable["lut"] - total["lut"])
        return model.transform(SetWeightMemory({n: {"ram_style": "distributed"} for n in moved}))

    def step_bnn_io_shapes(model, cfg):
        report = Path(cfg.output_dir) / "report"
        try:
            streams = streamed_weights(model, layer_names)
        except BnnError as e:
            fail("%s: %s" % (cfg.folding_config_file or cfg.output_dir, e))
        (report / "io_shapes.json").write_text(json.dumps(io_shapes(model, len(streams)), indent=2))
        (report / "external_weights.json").write_text(json.dumps(
            [{k: v for k, v in s.items() if k != "data"} for s in streams], indent=2))
        return model

    return step_bnn_external_weights, step_bnn_weight_memory, step_bnn_io_shapes


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
    """FINN's estimate_only_dataflow_steps with ours inserted (names are strings, ours callables), the
    weight memory planned for ``board`` (:func:`external_weights_steps`; without one the list only
    names the steps, e.g. for resuming after them)."""
    from finn.builder.build_dataflow_config import estimate_only_dataflow_steps

    weights = external_weights_steps(board, layer_names)
    steps: List = []
    for name in estimate_only_dataflow_steps:
        if name == "step_streamline":
            steps.append(step_bnn_absorb_binary_pad)
        steps.append(REPLACED_STEPS.get(name, name))
        if name == "step_convert_to_hw":
            steps.append(step_bnn_dsp_layers)
        if name == "step_create_dataflow_partition":
            steps.append(step_bnn_check_partition)
        if name == "step_specialize_layers":
            steps.append(weights[0])
        if name == "step_apply_folding_config":
            steps.append(weights[1])
    steps.append(weights[2])
    if hw_codegen:
        steps.append("step_hw_codegen")
    return steps
