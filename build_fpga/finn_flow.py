"""Driving finn-plus's builder for the frozen binary backbone: to FINN's estimate reports, refolding a
finished run, and reading the layers back from FINN's final graph.

FINN's own steps convert our QONNX contract without help (measured on the tiny and z2 stand-ins):
UINT8 input x +-1 weights -> ``MVAU`` (weights stored as INT2), ``Conv+Add(-T)+BipolarQuant`` ->
``MultiThreshold`` with the Add absorbed, ``MaxPool`` on binary maps -> depthwise
``ConvolutionInputGenerator`` + ``Pool``, +-1 x +-1 -> ``XnorPopcountMatMul`` -> ``MVAU`` with
``binaryXnorMode=1``, the last layer -> ``MVAU`` with ``outputDataType=BIPOLAR``; only the leading
NCHW->NHWC ``Transpose`` stays outside the accelerator. Our steps (``steps.py``) guard that and record
the accelerator's I/O shapes; bit-exactness is checked afterwards, layer by layer (``ladder.py``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bnn_transfer.host.benchmark import peak_rss_mb
from bnn_transfer.host.errors import BnnError

from .boards import Board
from .config import BuildConfig
from .estimate import Estimate
from .estimates import ddr_estimate, parse_estimates
from .finn_env import contained_build_logging, finn_session
from .steps import flow_steps


class FlowError(BnnError):
    pass


def dataflow_config(out_dir, cfg: BuildConfig, board: Board, steps=None, start_step=None,
                    outputs=("ESTIMATE_REPORTS",), layer_names: Optional[Sequence[str]] = None):
    """FINN's DataflowBuildConfig for ``cfg`` (no target fps and no folding: FINN's minimal folding)."""
    import finn.builder.build_dataflow_config as bc

    clock = cfg.clock()
    fps = cfg.target_fps if (cfg.target_fps or cfg.folding) else 1
    return bc.DataflowBuildConfig(
        output_dir=str(out_dir),
        board=board.finn_board,
        fpga_part=board.part,
        shell_flow_type=bc.ShellFlowType(board.shell_flow),
        synth_clk_period_ns=1000.0 / clock,
        target_fps=fps,
        folding_config_file=Path(cfg.folding).resolve() if cfg.folding else None,
        mvau_wwidth_max=cfg.mvau_wwidth_max,
        auto_fifo_strategy=bc.AutoFIFOSizingMethod(cfg.fifo),
        generate_outputs=[bc.DataflowOutputType[o] for o in outputs],
        steps=steps if steps is not None else flow_steps(cfg.hw_codegen, board, layer_names),
        start_step=start_step,
        save_intermediate_models=True,
        console_log_level=bc.LogLevel.NONE,
    )


def run_dataflow(model_path, out_dir: Path, dcfg) -> float:
    """build_dataflow_cfg with every failure turned into one FlowError line; returns the wall time."""
    from finn.builder.build_dataflow import build_dataflow_cfg
    from finn.util.exception import FINNUserError

    t0 = time.time()
    with contained_build_logging(), reused_heap():
        try:
            rc = build_dataflow_cfg(str(model_path), dcfg)
        except FINNUserError as e:  # re-raised by FINN under pytest; one log line otherwise (below)
            raise FlowError(str(e)) from None
        except Exception as e:
            raise FlowError("%s: FINN build failed: %s: %s" % (out_dir, type(e).__name__, e)) from e
    if rc != 0:
        log = out_dir / "build_dataflow.log"
        lines = log.read_text().splitlines() if log.exists() else []
        user = [ln.split(FINN_USER_ERROR, 1)[1] for ln in lines if FINN_USER_ERROR in ln]
        if user:  # a FINNUserError, ours (steps.fail) or FINN's: its message is the whole story
            raise FlowError(user[-1].strip())
        tail = [ln for ln in lines if "ERROR" in ln][-3:]
        raise FlowError("%s: FINN build failed (see build_dataflow.log): %s" % (out_dir, " | ".join(tail)))
    return time.time() - t0


# How build_dataflow_cfg logs a FINNUserError (finn.builder.build_dataflow, finn-plus 1.6.1).
FINN_USER_ERROR = "FINN ERROR: "


@contextlib.contextmanager
def reused_heap():
    """glibc malloc keeps freed memory for reuse while FINN runs, instead of mmap/munmap per block.

    qonnx's ``ModelWrapper.transform`` deep-copies the model, and its cleanup and shape inference
    re-serialize it and re-read every initializer, for every transformation: with the paper
    preset's 233 MB of float32 weights that is ~10,000 allocations of up to 150 MB in streamlining
    alone. glibc serves blocks above 32 MB with fresh mmaps, so each one page-faults its memory in
    again (87 million faults, 170 of 223 CPU seconds in the kernel, measured). With mmap off and
    the heap never trimmed, freed blocks are reused: streamlining took 133 s instead of 463 s
    and peaked at 3.1 instead of 4.1 GB (same machine and load). The defaults come back when the
    outermost of nested uses ends.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    if not _HEAP_USERS:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _HEAP_USERS.append(1)
    try:
        yield
    finally:
        _HEAP_USERS.pop()
        if not _HEAP_USERS:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


_HEAP_USERS: List[int] = []  # one entry per active reused_heap()
# mallopt parameters and glibc's defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc():
    import ctypes
    import ctypes.util

    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl or no glibc: nothing to tune
        return None


def _estimates(out_dir: Path, cfg: BuildConfig, board: Board, wall: float,
               layer_names: Optional[Sequence[str]]) -> Estimate:
    clock = cfg.clock()
    est = parse_estimates(out_dir / "report", board, clock, out_dir / "intermediate_models", layer_names, cfg.fifo)
    return replace(est, ddr=ddr_estimate(out_dir / "report", board, clock), target_fps=cfg.target_fps,
                   run={"wall_s": round(wall, 2), "peak_rss_mb": peak_rss_mb(), "config": cfg.finn_dict()})


def run_flow(model_path, out_dir, cfg: BuildConfig, layer_names: Optional[Sequence[str]] = None,
             build_dir=None) -> Estimate:
    """Run FINN to its estimate reports (and HW code generation with ``cfg.hw_codegen``); return
    :func:`build_fpga.estimates.parse_estimates`.

    ``build_dir`` is where FINN_BUILD_DIR goes (generated code); default ``out_dir/finn_build``. FINN's
    settings and env vars are restored afterwards (:func:`build_fpga.finn_env.finn_session`).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    board = cfg.target
    with finn_session(build_dir or out_dir / "finn_build"):
        wall = run_dataflow(model_path, out_dir, dataflow_config(out_dir, cfg, board, layer_names=layer_names))
    return _estimates(out_dir, cfg, board, wall, layer_names)


def refold(out_dir, cfg: BuildConfig, layer_names: Optional[Sequence[str]] = None, build_dir=None) -> Estimate:
    """Re-run only folding -> estimates on a finished :func:`run_flow` output dir (seconds, not minutes).

    Uses FINN's ``start_step`` resume from the model before folding (after the weight memory plan,
    ``intermediate_models/step_bnn_external_weights.onnx``); ``cfg.hw_codegen`` adds step_hw_codegen.
    """
    out_dir = Path(out_dir).resolve()
    board = cfg.target
    dcfg = dataflow_config(out_dir, cfg, board, start_step="step_target_fps_parallelization",
                           layer_names=layer_names)
    with finn_session(build_dir or out_dir / "finn_build"):
        wall = run_dataflow("", out_dir, dcfg)
    return _estimates(out_dir, cfg, board, wall, layer_names)


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
            act = n if len(n.input) > 2 else model.find_consumer(n.output[0])  # DSP layers: a Thresholding
            if act is None or not act.op_type.startswith(("MVAU", "Thresholding")):
                raise FlowError("%s: an MVAU without thresholds that no Thresholding node follows" % n.name)
            t = model.get_initializer(act.input[-1])
            xnor = bool(inst.get_nodeattr("binaryXnorMode"))
            w = (2 * w - 1) if xnor else w
            if t.shape[1] != 1:
                raise FlowError("%s: %d thresholds per channel; a binary layer has one" % (n.name, t.shape[1]))
            vectors = [int(v) for v in inst.get_nodeattr("numInputVectors")]
            if pending_conv is None and len(vectors) == 3:
                # a 1x1 stride-1 conv: FINN drops its im2col (an identity) and runs the MVAU once per pixel
                pending_conv = {"kernel": [1, 1], "stride": [1, 1], "ifm_dim": vectors[1:], "ofm_dim": vectors[1:],
                                "channels": int(inst.get_nodeattr("MW")), "padding": [0, 0, 0, 0]}
            rows.append({
                "node": n.name,
                "weights": np.asarray(w.T, dtype=np.int8),
                "thresholds": np.asarray(t[:, 0], dtype=np.int64),
                "domain": "popcount" if xnor else "acc",
                "mw": int(inst.get_nodeattr("MW")),
                "mh": int(inst.get_nodeattr("MH")),
                "input_dtype": inst.get_nodeattr("inputDataType"),
                "output_dtype": getCustomOp(act).get_nodeattr("outputDataType"),
                "acc_dtype": inst.get_nodeattr("accDataType"),
                "pe": int(inst.get_nodeattr("PE")),
                "simd": int(inst.get_nodeattr("SIMD")),
                "conv": pending_conv,
                "pool": None,
            })
            pending_conv = None
        elif not op.startswith(("StreamingFIFO", "StreamingDataWidthConverter", "Thresholding")):
            raise FlowError("%s: unexpected node %s in the dataflow graph" % (n.name, op))
    return rows
