"""FINN estimate flow for the frozen binary backbone (prototype of ``python -m build_fpga --estimate-only``).

``run_flow(model, out_dir, FlowConfig(board=...))`` runs finn-plus's builder (``build_dataflow_cfg``)
with an explicit step list: FINN's ``estimate_only_dataflow_steps`` (+ ``step_hw_codegen`` on request)
and our steps, and returns the estimates parsed into one dict (:func:`parse_estimates`).

FINN's own steps convert our QONNX contract without help (measured on the tiny and z2 stand-ins):
UINT8 input x +-1 weights -> ``MVAU`` (weights stored as INT2), ``Conv+Add(-T)+BipolarQuant`` ->
``MultiThreshold`` with the Add absorbed, ``MaxPool`` on binary maps -> depthwise
``ConvolutionInputGenerator`` + ``Pool``, +-1 x +-1 -> ``XnorPopcountMatMul`` -> ``MVAU`` with
``binaryXnorMode=1``, the last layer -> ``MVAU`` with ``outputDataType=BIPOLAR``; only the leading
NCHW->NHWC ``Transpose`` stays outside the accelerator. Our steps guard that (a changed graph must fail
loudly, not silently leave layers on the CPU), verify bit-exactness where FINN only logs, and record
the accelerator's I/O shapes, which FINN otherwise writes only when it makes the PYNQ driver after
synthesis.
"""

from __future__ import annotations

import copy
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from build_fpga.boards import RESOURCES, Board, get_board
from build_fpga.finn_env import contained_build_logging, finn_session
from host.errors import BnnError

# Our step names are the function names below; FINN saves each step's model as
# intermediate_models/<step name>.onnx.
BITEXACT_INPUT = "bitexact_input.npy"  # uint8 NCHW images (float container), in the build's output dir
BITEXACT_EXPECTED = "bitexact_expected.npy"  # +-1 features of the original QONNX graph


class FlowError(BnnError):
    pass


@dataclass
class FlowConfig:
    board: str = "pynq-z2"
    target_fps: Optional[int] = None  # None with no folding_file: FINN's minimal folding (1 fps target)
    folding_file: Optional[str] = None  # FINN folding config JSON (auto_folding_config.json format)
    clock_mhz: Optional[float] = None  # default: the board's
    mvau_wwidth_max: int = 36  # FINN's default; caps SIMD*weight bits per PE during folding
    hw_codegen: bool = False  # also run step_hw_codegen (HLS C++ / RTL sources; no Vivado needed)
    verify_images: Optional[np.ndarray] = None  # uint8 NCHW batch for the bit-exactness steps
    verify_features: Optional[np.ndarray] = None  # their +-1 features from the QONNX graph (computed if None)
    layer_names: Optional[List[str]] = None  # labels for the MVAUs in order (conv1..fc2); default L1..Ln

    def to_dict(self):
        d = asdict(self)
        d.pop("verify_images", None)
        d.pop("verify_features", None)
        return d


# ---------------------------------------------------------------- python execution helpers


def despecialize(model):
    """Copy of a FINN HW graph with ``X_hls``/``X_rtl`` nodes turned back into their ``X`` base ops.

    Specialized nodes execute only in cppsim/rtlsim (Vitis HLS / Vivado), but their base classes
    (MVAU, ConvolutionInputGenerator, Pool, FMPadding, ...) have a python ``execute_node`` and read
    the same attributes and initializers, so the folded, bit-width-minimized graph can be checked
    in python. Folding attributes do not change what a node computes.
    """
    m = copy.deepcopy(model)
    for node in m.graph.node:
        if node.domain.startswith("finn.custom_op.fpgadataflow."):
            node.domain = "finn.custom_op.fpgadataflow"
            for suffix in ("_hls", "_rtl"):
                if node.op_type.endswith(suffix):
                    node.op_type = node.op_type[: -len(suffix)]
    return m


def execute_batch(model, x: np.ndarray) -> np.ndarray:
    """Run ``execute_onnx`` image by image (FINN graphs have batch 1); returns (N, ...) outputs."""
    from finn.core.onnx_exec import execute_onnx

    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    ishape = tuple(model.get_tensor_shape(iname))
    outs = []
    for i in range(x.shape[0]):
        xi = np.asarray(x[i : i + 1], dtype=np.float32)
        if xi.shape != ishape and xi.ndim == 4 and xi.transpose(0, 2, 3, 1).shape == ishape:
            xi = xi.transpose(0, 2, 3, 1)  # the dataflow graph takes NHWC
        outs.append(execute_onnx(model, {iname: xi.reshape(ishape)})[oname].reshape(1, -1))
    return np.concatenate(outs, 0)


def finn_layer_outputs(model, x: np.ndarray) -> List[np.ndarray]:
    """Every binary layer's +-1 output of a FINN graph (streamlined or despecialized HW), image by image.

    ``x``: uint8 values, NCHW (as for :func:`execute_batch`; transposed when the graph takes NHWC).
    A layer ends at a ``MultiThreshold`` (streamlined) or ``MVAU`` (HW graph) output, or at the max
    pool that follows it (``MaxPoolNHWC``/``MaxPool``, or the HW graph's window generator + ``Pool``).
    Returns one (N, -1) float32 array per layer in NHWC flattening order; FINN's BINARY {0,1} maps
    are turned into +-1 (bit 1 = +1).
    """
    from finn.core.onnx_exec import execute_onnx

    names = []
    for n in model.graph.node:
        if n.op_type not in ("MultiThreshold", "MVAU") and not n.op_type.startswith("MVAU_"):
            continue
        out = n.output[0]
        nxt = model.find_consumer(out)
        if nxt is not None and nxt.op_type in ("MaxPoolNHWC", "MaxPool"):
            out = nxt.output[0]
        elif nxt is not None and nxt.op_type.startswith("ConvolutionInputGenerator"):
            pool = model.find_consumer(nxt.output[0])
            if pool is not None and pool.op_type.startswith("Pool"):
                out = pool.output[0]
        names.append(out)
    iname = model.graph.input[0].name
    ishape = tuple(model.get_tensor_shape(iname))
    per_layer: List[List[np.ndarray]] = [[] for _ in names]
    for i in range(x.shape[0]):
        xi = np.asarray(x[i : i + 1], dtype=np.float32)
        if xi.shape != ishape and xi.ndim == 4 and xi.transpose(0, 2, 3, 1).shape == ishape:
            xi = xi.transpose(0, 2, 3, 1)  # the dataflow graph takes NHWC
        if xi.shape != ishape:
            raise FlowError("graph input %s has shape %s, got images of shape %s (NCHW expected)"
                            % (iname, list(ishape), list(x.shape)))
        ctx = execute_onnx(model, {iname: xi}, return_full_exec_context=True)
        for j, name in enumerate(names):
            v = np.asarray(ctx[name], dtype=np.float32).reshape(1, -1)
            if model.get_tensor_datatype(name).name == "BINARY":
                v = 2 * v - 1
            per_layer[j].append(v)
    return [np.concatenate(v, 0) for v in per_layer]


def extract_layers(model) -> List[Dict]:
    """What an emulator needs, per MVAU of a FINN dataflow graph (e.g. step_generate_estimate_reports.onnx).

    Each row: ``weights`` int8 (MH, MW), rows = output channels, columns in FINN's im2col order
    (kh, kw, cin) with cin fastest for convs, NHWC (h, w, c) flatten order for the first FC after the
    convs; +1/-1 values (FINN stores xnor layers' weights as 0/1: 1 = +1). ``thresholds`` int64 (MH,),
    in ``domain`` "acc" (out = +1 iff sum(w*x) >= t; 8-bit first layer) or "popcount" (xnor layers:
    out = +1 iff popcount(xnor(x_bits, w_bits)) >= t, where bit 1 = +1; equals sum(w*x) >= 2t - MW).
    ``conv``: im2col geometry (kernel, stride, input HxW after padding, output HxW, channels, padding
    [top, left, bottom, right] added before it; pad value 0 = pixel 0 / bit 0 = -1) or None for FC.
    ``pool``: max pool (kernel, stride) after the layer, or None.
    """
    from qonnx.custom_op.registry import getCustomOp

    rows: List[Dict] = []
    pending_pad, pending_conv = None, None
    for n in model.graph.node:
        op = n.op_type
        inst = getCustomOp(n) if n.domain.startswith("finn.custom_op.fpgadataflow") else None
        if op.startswith("FMPadding"):
            pending_pad = [int(v) for v in inst.get_nodeattr("Padding")]
        elif op.startswith("ConvolutionInputGenerator") and not inst.get_nodeattr("depthwise"):
            pending_conv = {
                "kernel": [int(v) for v in inst.get_nodeattr("ConvKernelDim")],
                "stride": [int(v) for v in inst.get_nodeattr("Stride")],
                "ifm_dim": [int(v) for v in inst.get_nodeattr("IFMDim")],
                "ofm_dim": [int(v) for v in inst.get_nodeattr("OFMDim")],
                "channels": int(inst.get_nodeattr("IFMChannels")),
                "padding": pending_pad or [0, 0, 0, 0],
            }
            pending_pad = None
        elif op.startswith("ConvolutionInputGenerator") or op.startswith("Pool"):
            if op.startswith("ConvolutionInputGenerator"):  # the window generator of a max pool
                rows[-1]["pool"] = {"kernel": [int(v) for v in inst.get_nodeattr("ConvKernelDim")],
                                    "stride": [int(v) for v in inst.get_nodeattr("Stride")]}
            elif inst.get_nodeattr("Function") != "MaxPool":
                raise FlowError("%s: unsupported pooling %s" % (n.name, inst.get_nodeattr("Function")))
        elif op.startswith("MVAU"):
            w = model.get_initializer(n.input[1])
            t = model.get_initializer(n.input[2])
            xnor = bool(inst.get_nodeattr("binaryXnorMode"))
            w = (2 * w - 1) if xnor else w
            if t.shape[1] != 1:
                raise FlowError("%s: %d thresholds per channel; a binary layer has one" % (n.name, t.shape[1]))
            rows.append({
                "node": n.name,
                "weights": np.asarray(w.T, dtype=np.int8),
                "thresholds": np.asarray(t[:, 0], dtype=np.int64),
                "domain": "popcount" if xnor else "acc",
                "mw": int(inst.get_nodeattr("MW")),
                "mh": int(inst.get_nodeattr("MH")),
                "input_dtype": inst.get_nodeattr("inputDataType"),
                "output_dtype": inst.get_nodeattr("outputDataType"),
                "acc_dtype": inst.get_nodeattr("accDataType"),
                "pe": int(inst.get_nodeattr("PE")),
                "simd": int(inst.get_nodeattr("SIMD")),
                "conv": pending_conv,
                "pool": None,
            })
            pending_conv = None
        elif not op.startswith(("StreamingFIFO", "StreamingDataWidthConverter")):
            raise FlowError("%s: unexpected node %s in the dataflow graph" % (n.name, op))
    return rows


# ---------------------------------------------------------------- our build steps


def _load_verify(cfg) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    d = Path(cfg.output_dir)
    if not (d / BITEXACT_INPUT).exists():
        return None, None
    return np.load(d / BITEXACT_INPUT, allow_pickle=False), np.load(d / BITEXACT_EXPECTED, allow_pickle=False)


def _check_bits(model, cfg, stage):
    x, expected = _load_verify(cfg)
    if x is None:
        return
    got = execute_batch(model, x)
    bad = int((got != expected.reshape(got.shape)).sum())
    report = Path(cfg.output_dir) / "report" / "bitexact.json"
    data = json.loads(report.read_text()) if report.exists() else {}
    data[stage] = {"images": int(x.shape[0]), "mismatched_bits": bad, "bits": int(got.size)}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(data, indent=2))
    if bad:
        _fail("%s: %s graph differs from the QONNX graph in %d of %d feature bits" % (
            cfg.output_dir, stage, bad, got.size))


_STEP_ERROR: List[str] = []


def _fail(msg: str):
    """Abort the build from one of our steps with a one-line message.

    build_dataflow_cfg catches every exception and returns -1 (it re-raises only under pytest); a
    FINNUserError is logged as one line without a traceback, and _run turns the message into FlowError.
    """
    from finn.util.exception import FINNUserError

    _STEP_ERROR.append(msg)
    raise FINNUserError(msg)


def step_bnn_absorb_binary_pad(model, cfg):
    """Pad(value=-1) on a BIPOLAR map -> padding of the Conv that consumes it.

    The export contract pads binary maps with -1 (the 0 bit; ``paper`` preset). FINN keeps such a Pad
    as a plain ONNX Pad: streamlining turns its input into BINARY {0,1} but leaves the constant -1
    (python execution then differs from QONNX), and InferFMPadding only converts zero-valued Pads
    with an explicit axes input. A Conv's own padding on a binary input, however, is lowered to
    Im2Col/FMPadding on the BINARY stream, which inserts 0 bits, i.e. exactly -1. After this step the
    tidy graph alone is not QONNX-exact (ONNX Conv pads with 0); the streamlined graph and the
    hardware are (tested). No-op for graphs without such pads (tiny, z2).
    """
    from qonnx.core.datatype import DataType
    from qonnx.transformation.infer_shapes import InferShapes

    changed = False
    for node in list(model.graph.node):
        if node.op_type != "Pad" or len(node.input) < 3:
            continue
        value = model.get_initializer(node.input[2])
        pads = model.get_initializer(node.input[1])
        consumer = model.find_consumer(node.output[0])
        if value is None or pads is None or float(value) != -1.0 or consumer is None or consumer.op_type != "Conv":
            continue
        if model.get_tensor_datatype(node.input[0]) != DataType["BIPOLAR"] or len(pads) != 8:
            continue
        pads = [int(v) for v in pads]
        if pads[0] or pads[1] or pads[4] or pads[5]:
            continue  # pads batch or channels: not a spatial pad
        conv_pads = next(a for a in consumer.attribute if a.name == "pads")
        if any(conv_pads.ints):
            continue
        conv_pads.ints[:] = [pads[2], pads[3], pads[6], pads[7]]
        consumer.input[0] = node.input[0]
        model.graph.node.remove(node)
        changed = True
    if changed:
        model = model.transform(InferShapes())
    return model


def step_bnn_verify_streamlined(model, cfg):
    """Exact comparison after streamlining (FINN's own verify_step only logs SUCCESS/FAIL)."""
    _check_bits(model, cfg, "streamlined")
    return model


def step_bnn_check_partition(model, cfg):
    """After step_create_dataflow_partition (``model`` is now the dataflow child): everything but the
    leading NCHW->NHWC Transpose must be in the single accelerator partition."""
    from qonnx.core.modelwrapper import ModelWrapper

    parent = ModelWrapper(str(Path(cfg.output_dir) / "intermediate_models" / "dataflow_parent.onnx"))
    ops = [n.op_type for n in parent.graph.node]
    if ops not in (["StreamingDataflowPartition"], ["Transpose", "StreamingDataflowPartition"]):
        _fail("%s: FINN left layers outside the accelerator: %s" % (cfg.output_dir, ", ".join(ops)))
    stray = [n.op_type for n in model.graph.node if not n.domain.startswith("finn.custom_op.fpgadataflow")]
    if stray:
        _fail("%s: non-hardware nodes in the dataflow partition: %s" % (cfg.output_dir, ", ".join(stray)))
    return model


def step_bnn_verify_hw(model, cfg):
    """Exact comparison of the folded, bit-width-minimized HW graph (python execution of base ops)."""
    _check_bits(despecialize(model), cfg, "hw")
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


def flow_steps(hw_codegen: bool = False, verify: bool = False) -> List:
    """FINN's estimate_only_dataflow_steps with ours inserted (names are strings, ours callables)."""
    from finn.builder.build_dataflow_config import estimate_only_dataflow_steps

    steps: List = []
    for name in estimate_only_dataflow_steps:
        if name == "step_streamline":
            steps.append(step_bnn_absorb_binary_pad)
        steps.append(name)
        if name == "step_streamline" and verify:
            steps.append(step_bnn_verify_streamlined)
        if name == "step_create_dataflow_partition":
            steps.append(step_bnn_check_partition)
        if name == "step_minimize_bit_width" and verify:
            steps.append(step_bnn_verify_hw)
    steps.append(step_bnn_io_shapes)
    if hw_codegen:
        steps.append("step_hw_codegen")
    return steps


# ---------------------------------------------------------------- running FINN


def build_config(out_dir, cfg: FlowConfig, board: Board, steps=None, start_step=None, outputs=("ESTIMATE_REPORTS",)):
    import finn.builder.build_dataflow_config as bc

    clock = cfg.clock_mhz or board.clock_mhz
    fps = cfg.target_fps if (cfg.target_fps or cfg.folding_file) else 1
    return bc.DataflowBuildConfig(
        output_dir=str(out_dir),
        board=board.finn_board,
        fpga_part=board.part,
        shell_flow_type=bc.ShellFlowType(board.shell_flow),
        synth_clk_period_ns=1000.0 / clock,
        target_fps=fps,
        folding_config_file=Path(cfg.folding_file).resolve() if cfg.folding_file else None,
        mvau_wwidth_max=cfg.mvau_wwidth_max,
        generate_outputs=[bc.DataflowOutputType[o] for o in outputs],
        steps=steps if steps is not None else flow_steps(cfg.hw_codegen, cfg.verify_images is not None),
        start_step=start_step,
        save_intermediate_models=True,
        console_log_level=bc.LogLevel.NONE,
    )


def _run(model_path, out_dir: Path, dcfg) -> float:
    from finn.builder.build_dataflow import build_dataflow_cfg

    t0 = time.time()
    del _STEP_ERROR[:]
    with contained_build_logging():
        try:
            rc = build_dataflow_cfg(str(model_path), dcfg)
        except Exception as e:  # re-raised by FINN under pytest; a log line otherwise
            if _STEP_ERROR:
                raise FlowError(_STEP_ERROR[-1]) from None
            raise FlowError("%s: FINN build failed: %s: %s" % (out_dir, type(e).__name__, e)) from e
    if rc != 0 and _STEP_ERROR:
        raise FlowError(_STEP_ERROR[-1])
    if rc != 0:
        log = out_dir / "build_dataflow.log"
        tail = [ln for ln in log.read_text().splitlines() if "ERROR" in ln][-3:] if log.exists() else []
        raise FlowError("%s: FINN build failed (see build_dataflow.log): %s" % (out_dir, " | ".join(tail)))
    return time.time() - t0


def run_flow(model_path, out_dir, cfg: FlowConfig, build_dir=None) -> Dict:
    """Run FINN to its estimate reports (and HW code generation on request); return :func:`parse_estimates`.

    ``build_dir`` is where FINN_BUILD_DIR goes (generated code); default ``out_dir/finn_build``. FINN's
    settings and env vars are restored afterwards (:func:`build_fpga.finn_env.finn_session`).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    board = get_board(cfg.board)
    (out_dir / "report" / "bitexact.json").unlink(missing_ok=True)
    with finn_session(build_dir or out_dir / "finn_build"):
        if cfg.verify_images is not None:
            x = np.asarray(cfg.verify_images, dtype=np.float32)
            y = cfg.verify_features
            if y is None:
                from qonnx.core.modelwrapper import ModelWrapper

                y = execute_batch(ModelWrapper(str(model_path)), x)
            np.save(out_dir / BITEXACT_INPUT, x, allow_pickle=False)
            np.save(out_dir / BITEXACT_EXPECTED, np.asarray(y, dtype=np.float32), allow_pickle=False)
        dcfg = build_config(out_dir, cfg, board)
        wall = _run(model_path, out_dir, dcfg)
    est = parse_estimates(out_dir / "report", board, cfg.clock_mhz or board.clock_mhz, out_dir / "intermediate_models",
                          cfg.layer_names)
    est["target_fps"] = cfg.target_fps
    est["run"] = {"wall_s": round(wall, 2), "peak_rss_mb": _peak_rss_mb(), "config": cfg.to_dict()}
    return est


def refold(out_dir, cfg: FlowConfig, build_dir=None) -> Dict:
    """Re-run only folding -> estimates on a finished :func:`run_flow` output dir (seconds, not minutes).

    Uses FINN's ``start_step`` resume from ``intermediate_models/step_specialize_layers.onnx``;
    ``cfg.hw_codegen`` adds step_hw_codegen, the verify steps are not re-run.
    """
    out_dir = Path(out_dir).resolve()
    board = get_board(cfg.board)
    steps = flow_steps(hw_codegen=cfg.hw_codegen, verify=False)
    dcfg = build_config(out_dir, cfg, board, steps=steps, start_step="step_target_fps_parallelization")
    with finn_session(build_dir or out_dir / "finn_build"):
        wall = _run("", out_dir, dcfg)
    est = parse_estimates(out_dir / "report", board, cfg.clock_mhz or board.clock_mhz, out_dir / "intermediate_models",
                          cfg.layer_names)
    est["target_fps"] = cfg.target_fps
    est["run"] = {"wall_s": round(wall, 2), "peak_rss_mb": _peak_rss_mb(), "config": cfg.to_dict()}
    return est


# What FINN's Zynq flow produces after the estimates: IP, stitched design, bitstream, PYNQ driver.
HARDWARE_OUTPUTS = ("ESTIMATE_REPORTS", "STITCHED_IP", "BITFILE", "PYNQ_DRIVER")


def hardware_steps() -> List[str]:
    """FINN's default build steps after the estimate reports (step_generate_hardware does HW codegen,
    HLS IP generation and FIFO sizing; then stitched IP, ZynqBuild synthesis + bitstream, driver)."""
    from finn.builder.build_dataflow_config import default_build_dataflow_steps as steps

    return list(steps[steps.index("step_generate_estimate_reports") + 1 :])


def run_hardware(out_dir, cfg: FlowConfig, build_dir=None) -> Dict:
    """Continue a finished :func:`run_flow`/:func:`refold` output dir through synthesis (needs Vivado).

    Resumes with FINN's ``start_step`` from the model our estimate steps left
    (``intermediate_models/step_bnn_io_shapes.onnx``: folded, bit-width-minimized dataflow child), so
    the hardware is exactly what was estimated and verified. Returns the paths of the ``.bit``,
    ``.hwh`` and driver directory, and the ``io_shape_dict`` of FINN's ``driver/settings.json``.
    """
    out_dir = Path(out_dir).resolve()
    board = get_board(cfg.board)
    if not (out_dir / "intermediate_models" / "step_bnn_io_shapes.onnx").exists():
        raise FlowError("%s: no finished estimate build to continue from" % out_dir)
    hw = hardware_steps()
    steps = flow_steps(hw_codegen=False, verify=False) + hw
    dcfg = build_config(out_dir, cfg, board, steps=steps, start_step=hw[0], outputs=HARDWARE_OUTPUTS)
    with finn_session(build_dir or out_dir / "finn_build"):
        wall = _run("", out_dir, dcfg)
    bit, hwh = out_dir / "bitfile" / "finn-accel.bit", out_dir / "bitfile" / "finn-accel.hwh"
    settings = out_dir / "driver" / "settings.json"
    for p in (bit, hwh, settings):
        if not p.exists():
            raise FlowError("%s: FINN's hardware build finished without %s" % (out_dir, p.name))
    info = json.loads(settings.read_text())["driver_information"]
    return {"bitfile": bit, "hwh": hwh, "driver_dir": out_dir / "driver", "io": info["io_shape_dict"],
            "wall_s": round(wall, 1)}


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux; it is the process's peak, not this run's alone.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


# ---------------------------------------------------------------- reports


_FINN_RES = {"lut": "LUT", "bram18": "BRAM_18K", "uram": "URAM", "dsp": "DSP"}


def parse_estimates(report_dir, board: Board, clock_mhz: float, models_dir=None,
                    layer_names: Optional[Sequence[str]] = None) -> Dict:
    """FINN's estimate reports -> our estimates dict (the keys issue #5 asks for, and per-layer rows).

    FINN's analytical models have no FF estimate: ``ff.used`` is None (only Vivado HLS's reports,
    step_hw_ipgen, give FFs).
    """
    report_dir = Path(report_dir)
    perf = json.loads((report_dir / "estimate_network_performance.json").read_text())
    res = json.loads((report_dir / "estimate_layer_resources.json").read_text())
    cycles = json.loads((report_dir / "estimate_layer_cycles.json").read_text())
    params = json.loads((report_dir / "op_and_param_counts.json").read_text())
    total = res.pop("total")
    attrs = _node_attrs(Path(models_dir) / "step_generate_estimate_reports.onnx") if models_dir else {}
    blocks = _assign_blocks(list(res), attrs, layer_names)
    layers = []
    for name, r in res.items():
        a = attrs.get(name, {})
        p = params.get(name, {})
        layers.append({
            "node": name,
            "op_type": a.get("op_type", name.rsplit("_", 1)[0]),
            "layer": blocks.get(name),
            "cycles": int(cycles.get(name, 0)),
            "lut": int(round(r.get("LUT", 0))),
            "bram18": int(round(r.get("BRAM_18K", 0))),
            "uram": int(round(r.get("URAM", 0))),
            "dsp": int(round(r.get("DSP", 0))),
            "bram_efficiency": r.get("BRAM_efficiency"),
            "pe": a.get("PE"),
            "simd": a.get("SIMD"),
            "mw": a.get("MW"),
            "mh": a.get("MH"),
            "weight_bits": _weight_bits(p),
            "macs": int(sum(v for k, v in p.items() if k.startswith("op_mac_"))),
        })
    out = {
        "board": board.name,
        "finn_board": board.finn_board,
        "part": board.part,
        "clock_mhz": float(clock_mhz),
        "fps": float(perf["estimated_throughput_fps"]),
        "latency_cycles": int(perf["critical_path_cycles"]),
        "max_cycles": int(perf["max_cycles"]),
        "bottleneck": perf["max_cycles_node_name"],
        "latency_ms": float(perf["estimated_latency_ns"]) / 1e6,
    }
    for r in RESOURCES:
        used = None if r == "ff" else int(round(total.get(_FINN_RES[r], 0)))
        out[r] = {"used": used, "available": getattr(board, r), "usable": board.usable[r], "margin": board.margins[r]}
    out["ff"]["note"] = "not estimated: FINN's analytical resource models have no FF term"
    out["layers"] = layers
    out["weight_bits"] = int(sum(ly["weight_bits"] for ly in layers))
    out["excludes"] = "FIFOs, data width converters, IODMAs and the Zynq shell (added by the hardware build)"
    return out


def _weight_bits(counts: Dict) -> int:
    """Stored weight bits from op_and_param_counts keys like ``param_weight_2b``."""
    weights = {k: v for k, v in counts.items() if k.startswith("param_weight_")}
    return int(sum(v * int(k.rsplit("_", 1)[1].rstrip("b")) for k, v in weights.items()))


def _node_attrs(path: Path) -> Dict[str, Dict]:
    if not path.exists():
        return {}
    from onnx import helper
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(path))
    out = {}
    for n in m.graph.node:
        a = {"op_type": n.op_type}
        for at in n.attribute:
            if at.name in ("PE", "SIMD", "MW", "MH", "depthwise"):
                a[at.name] = helper.get_attribute_value(at)
        out[n.name] = a
    return out


def _assign_blocks(names: List[str], attrs: Dict[str, Dict], layer_names) -> Dict[str, str]:
    """Attach each HW node to the layer (MVAU) it serves: padding and im2col to the next MVAU, pooling
    (depthwise im2col + Pool) to the previous one."""
    if not attrs:
        return {}
    mvaus = [n for n in names if attrs.get(n, {}).get("op_type", "").startswith("MVAU")]
    labels = ["L%d" % (i + 1) for i in range(len(mvaus))]
    if layer_names and len(layer_names) == len(mvaus):
        labels = list(layer_names)
    out, idx, pending = {}, -1, []
    for n in names:
        op = attrs.get(n, {}).get("op_type", "")
        if op.startswith("MVAU"):
            idx += 1
            for p in pending:
                out[p] = labels[idx]
            pending = []
            out[n] = labels[idx]
        elif op.startswith("FMPadding") or (
                op.startswith("ConvolutionInputGenerator") and not attrs[n].get("depthwise")):
            pending.append(n)
        else:
            out[n] = labels[max(idx, 0)]
    for p in pending:
        out[p] = labels[-1]
    return out


def check_fit(est: Dict, margins: bool = True) -> List[str]:
    """Violations, one line each ("LUT 41,000 > 37,240 usable (70% of 53,200)"); empty when it fits.

    ``margins=False`` checks against 100% of the board (the hard limit for refusing a build).
    """
    bad = []
    for r in RESOURCES:
        used = est[r]["used"]
        if used is None:
            continue
        limit = est[r]["usable"] if margins else est[r]["available"]
        if used > limit:
            what = "available"
            if margins:
                what = "usable (%d%% of %s)" % (round(est[r]["margin"] * 100), format(est[r]["available"], ","))
            bad.append("%s %s > %s %s" % (r.upper(), format(used, ","), format(limit, ","), what))
    return bad


def find_max_fps(model_path, out_dir, board: str, candidates: Sequence[int], margins: bool = True,
                 mvau_wwidth_max: int = 36) -> Tuple[Optional[Dict], List[Dict]]:
    """Estimate every candidate target fps (BRAM use is not monotonic in fps, so no bisection) and
    return the fitting estimate with the highest achieved fps, and all rows tried."""
    cands = sorted(set(int(c) for c in candidates))
    first = run_flow(model_path, out_dir, FlowConfig(board=board, target_fps=cands[0], mvau_wwidth_max=mvau_wwidth_max))
    tried, best = [first], None
    for fps in cands[1:]:
        tried.append(refold(out_dir, FlowConfig(board=board, target_fps=fps, mvau_wwidth_max=mvau_wwidth_max)))
    for est in tried:
        if not check_fit(est, margins) and (best is None or est["fps"] > best["fps"]):
            best = est
    return best, tried
