"""``python -m build_fpga``: an export directory -> FINN dataflow build -> deploy bundle.

What :func:`build` does, in order; every failure is one line (BnnError) and leaves no bundle:

1. Inputs: the export dir (every file hash-checked by ``load_export``), the board, the folding file.
   When DEPLOY_DIR already holds a valid bundle of the same export with the same parameters the
   build is skipped (the one-command demo reruns every stage).
2. Reference: the integer layers read back from ``backbone.onnx`` and ``export.json`` must hash to
   the export's ``backbone_digest``, i.e. be exactly the torch side's frozen integers.
3. FINN: the estimate flow (``flow.run_flow``) at the chosen folding. Default: the highest target fps
   whose estimate stays within FINN's margins (70% LUT, 80% BRAM18, ...), found by refolding the
   same streamlined model over a candidate list (``flow.refold`` takes about a second per point).
4. Fit: more than 100% of any resource refuses the build (exit 2) naming the resource.
5. Bit-exactness: on seeded random uint8 images, FINN's streamlined graph, FINN's HW graph (python
   execution of the despecialized nodes) and the bundle's emulator must equal the torch integer
   backbone layer by layer; a difference names the first layer where it happens.
6. Bundle (``bundle.py``) and report (``report.py``), built under a temporary name.
7. With Vivado on PATH (and no ``--estimate-only``): FINN's hardware steps, bitfile into the bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from host.errors import BnnError
from host.manifest import atomic_dir, manifest_digest, sha256_bytes

from .boards import board_names

BUNDLE_MANIFEST = "manifest.json"
VERIFY_SEED = 0
# Coarse target-fps ladder for the default search; between the last fitting point f and the first
# one over the margins (2f) three more points are tried (BRAM use is not monotonic in fps).
COARSE_FPS = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)
REFINE_STEPS = (1.25, 1.5, 1.75)


@dataclass
class BuildConfig:
    export: str  # export directory (backbone.onnx + export.json)
    board: str  # pynq-z1, pynq-z2, ultra96, zcu104, kv260
    out: str  # DEPLOY_DIR
    target_fps: Optional[int] = None  # None: the highest that fits the board within FINN's margins
    folding: Optional[str] = None  # FINN folding config JSON (e.g. a bundle's report/folding_config.json)
    estimate_only: bool = False  # no synthesis even where Vivado is on PATH
    hw_codegen: bool = False  # also generate the HLS C++/RTL sources (no Vivado needed)
    build_dir: Optional[str] = None  # FINN's working dir; default: a temp dir, or <out>.finn-build with hw_codegen
    verify_images: int = 4  # seeded random images for the bit-exactness checks (0: none)


@dataclass
class BuildResult:
    out: str
    skipped: bool
    hardware: bool  # a bitfile was built
    estimates: Dict = field(default_factory=dict)
    build_dir: Optional[str] = None  # kept FINN working dir, or None when it was removed
    message: str = ""  # the one line the CLI prints


def _vivado_available() -> bool:
    from .finn_env import vivado_available

    return vivado_available()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build(cfg: BuildConfig, log: Callable[[str], None] = _stderr) -> BuildResult:
    """Run the whole stage; see the module docstring. ``log`` gets progress lines (default: stderr;
    stdout is silenced while FINN runs)."""
    from export.backbone import EXPORT_MANIFEST, load_export

    _check_config(cfg)
    out = os.path.abspath(cfg.out)
    export = load_export(cfg.export)
    folding_bytes = _read_folding(cfg.folding)
    hardware = not cfg.estimate_only and _vivado_available()
    export_sha = manifest_digest(cfg.export, EXPORT_MANIFEST)
    params = build_params(cfg, folding_bytes, hardware)
    if up_to_date(out, export_sha, params):
        msg = "build_fpga: %s is up to date, skipping" % out
        return BuildResult(out, True, hardware, message=msg)

    build_dir, keep = _build_dir(cfg, out, hardware)
    try:
        return _build(cfg, out, export, export_sha, params, folding_bytes, hardware, build_dir, keep, log)
    finally:
        if not keep:
            shutil.rmtree(build_dir, ignore_errors=True)


def _build(cfg, out, export, export_sha, params, folding_bytes, hardware, build_dir, keep, log) -> BuildResult:
    from . import bundle, report
    from .boards import get_board
    from .flow import FlowConfig, check_fit, extract_layers, run_flow

    board = get_board(cfg.board)
    onnx = os.path.join(cfg.export, "backbone.onnx")
    layers = reference_layers(cfg.export, export)
    names = [il.name for il in layers]
    finn_dir = os.path.join(build_dir, "finn")
    flow_cfg = FlowConfig(board=board.name, target_fps=cfg.target_fps, hw_codegen=cfg.hw_codegen, layer_names=names)
    if folding_bytes is not None:
        flow_cfg.folding_file = os.path.join(build_dir, "folding_input.json")
        with open(flow_cfg.folding_file, "wb") as f:
            f.write(folding_bytes)

    t0 = time.time()
    sweep: List[Dict] = []
    with _quiet_finn():
        if cfg.target_fps is None and folding_bytes is None:
            log("build_fpga: searching the highest target fps that fits %s within FINN's margins" % board.name)
            est, sweep = search_max_fps(onnx, finn_dir, flow_cfg, log)
            mode = "highest fitting target fps (default)"
        else:
            mode = "--folding %s" % cfg.folding if folding_bytes is not None else "--target-fps %d" % cfg.target_fps
            log("build_fpga: FINN estimate flow for %s with %s" % (board.name, mode))
            est = run_flow(onnx, finn_dir, flow_cfg)
    est["folding_mode"] = mode
    refusal = fit_refusal(est, out, "file" if folding_bytes is not None else "fps" if cfg.target_fps else "default")
    if refusal:
        raise BnnError(refusal)
    log("build_fpga: estimate %.0f img/s, LUT %s, BRAM18 %s (%.0f s)" % (
        est["fps"], _pct(est["lut"]), _pct(est["bram18"]), time.time() - t0))
    for line in check_fit(est):
        log("build_fpga: warning: %s: over FINN's recommended margin, timing closure may fail" % line)

    from qonnx.core.modelwrapper import ModelWrapper

    from export.emulator_weights import emulator_arrays

    hw_model = ModelWrapper(os.path.join(finn_dir, "intermediate_models", "step_generate_estimate_reports.onnx"))
    input_size = int(export["preprocess"]["input_size"])
    finn_arrays = bundle.finn_emulator_arrays(extract_layers(hw_model), names, input_size)
    bundle.check_emulator(finn_arrays, emulator_arrays(layers, input_size), layers, out)
    bitexact = verify_build(layers, finn_dir, hw_model, finn_arrays, cfg.verify_images, export, out, log)

    hw = None
    if hardware:
        from .flow import run_hardware

        log("build_fpga: Vivado found: FINN hardware steps (HLS IP, stitching, synthesis, bitstream); this takes long")
        with _quiet_finn():
            hw = run_hardware(finn_dir, FlowConfig(board=board.name, layer_names=names))
        n_ext = int(hw["io"].get("number_of_external_weights", 0) or 0)
        if n_ext:
            raise BnnError("%s: FINN streams %d weight tensor(s) from DRAM; bundles with external weights are not "
                           "supported yet (use a board with more on-chip memory or a smaller preset)" % (out, n_ext))

    if hw is not None:
        io = hw["io"]  # FINN's own driver settings, after ZynqBuild inserted the DMAs
    else:
        with open(os.path.join(finn_dir, "report", "io_shapes.json"), encoding="utf-8") as f:
            io = json.load(f)
    with atomic_dir(out) as tmp:
        report.write_report(
            os.path.join(tmp, "report"), est, finn_dir, board=board, export=export, sweep=sweep,
            bitexact=bitexact, folding_file=_folding_source(finn_dir, folding_bytes is not None),
            hardware=hw is not None)
        bundle.write_bundle(
            tmp, export_dir=cfg.export, export=export, export_sha=export_sha, params=params, board=board,
            emulator=finn_arrays, io=io, estimates=est, hw=hw,
            build_dir=build_dir if keep else None)
    if hw is not None:
        msg = "build_fpga: bitstream and bundle written to %s" % out
    else:
        why = "--estimate-only was given" if cfg.estimate_only and _vivado_available() else "Vivado is not on PATH"
        msg = ("synthesis and bitstream skipped: %s (estimates and emulator bundle written to %s)" % (why, out))
    return BuildResult(out, False, hw is not None, est, build_dir if keep else None, msg)


# ------------------------------------------------------------------------------------------ inputs


def _check_config(cfg: BuildConfig) -> None:
    if cfg.board not in board_names():
        raise BnnError("unknown board %r (choose from %s)" % (cfg.board, ", ".join(board_names())))
    if cfg.target_fps is not None and cfg.target_fps < 1:
        raise BnnError("--target-fps %r: must be a positive number of images per second" % cfg.target_fps)
    if cfg.target_fps is not None and cfg.folding is not None:
        raise BnnError("--target-fps and --folding exclude each other: the folding file fixes the parallelism")
    if cfg.verify_images < 0:
        raise BnnError("--verify-images %r: must be 0 or more" % cfg.verify_images)
    if not os.path.isdir(cfg.export):
        raise BnnError("%s: export directory not found (write it with 'python -m export backbone')" % cfg.export)


def _read_folding(path: Optional[str]) -> Optional[bytes]:
    """The folding file's bytes, read now: it may live inside the DEPLOY_DIR this build replaces."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BnnError("%s: folding config not found" % path) from None
    except OSError as e:
        raise BnnError("%s: cannot read the folding config (%s)" % (path, e)) from None
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BnnError("%s: not valid JSON (%s)" % (path, e)) from None
    if not isinstance(cfg, dict) or not any(isinstance(v, dict) for v in cfg.values()):
        raise BnnError("%s: not a FINN folding config (a JSON object of node name -> {PE, SIMD, ...})" % path)
    return data


def build_params(cfg: BuildConfig, folding_bytes: Optional[bytes], hardware: bool) -> Dict:
    """What makes two builds of the same export identical (paths and the build dir do not)."""
    return {
        "board": cfg.board,
        "target_fps": cfg.target_fps,
        "folding_sha256": sha256_bytes(folding_bytes) if folding_bytes is not None else None,
        "estimate_only": bool(cfg.estimate_only),
        "hw_codegen": bool(cfg.hw_codegen),
        "verify_images": int(cfg.verify_images),
        "hardware": bool(hardware),
    }


def up_to_date(out: str, export_sha: str, params: Dict) -> bool:
    if not os.path.exists(os.path.join(out, BUNDLE_MANIFEST)):
        return False
    from host.bundle import load_bundle

    try:
        m = load_bundle(out).manifest
    except BnnError:
        return False  # tampered or half-written: rebuild it
    return m.get("inputs", {}).get("export", {}).get("sha256") == export_sha and m.get("params") == params


def _build_dir(cfg: BuildConfig, out: str, hardware: bool) -> Tuple[str, bool]:
    """(FINN working dir, keep it). Kept when asked for, with --hw-codegen so Vivado users can resume,
    and for a Vivado build, whose Vivado projects and logs are what one reads when synthesis fails."""
    if cfg.build_dir:
        path = os.path.abspath(cfg.build_dir)
        os.makedirs(path, exist_ok=True)
        return path, True
    parent, name = os.path.dirname(out), os.path.basename(out)
    os.makedirs(parent, exist_ok=True)
    if cfg.hw_codegen or hardware:
        path = os.path.join(parent, name + ".finn-build")
        shutil.rmtree(path, ignore_errors=True)  # ours: stale generated code would pile up
        os.makedirs(path)
        return path, True
    return tempfile.mkdtemp(dir=parent, prefix="." + name + ".finn-"), False


def _folding_source(finn_dir: str, from_file: bool) -> str:
    # FINN writes the folding it applied from a file as applied_folding_config.json and the one
    # SetFolding chose for a target fps as auto_folding_config.json; both round-trip via --folding.
    name = "applied_folding_config.json" if from_file else "auto_folding_config.json"
    return os.path.join(finn_dir, "report", name)


@contextlib.contextmanager
def _quiet_finn():
    """FINN prints every step to stdout, which is reserved for the CLI's one result line; the same
    lines are in its build_dataflow.log (copied to report/finn/)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _pct(r: Dict) -> str:
    if r["used"] is None:
        return "n/a"
    return "%s (%.0f%%)" % (format(r["used"], ","), 100.0 * r["used"] / r["available"] if r["available"] else 0)


# ------------------------------------------------------------------------------- reference layers


def reference_layers(export_dir: str, export: Dict):
    """The integer layers (train.freeze.IntLayer) of the export, read back from its QONNX graph.

    Weights are the BipolarQuant'ed initializers of each Conv/Gemm, thresholds the negated biases,
    geometry from export.json. They must hash to the export's ``backbone_digest``: then they are
    exactly what the torch side folded, without needing the checkpoint (which may not travel with
    the export directory).
    """
    from qonnx.core.modelwrapper import ModelWrapper

    from train.freeze import IntLayer, backbone_digest

    path = os.path.join(export_dir, "backbone.onnx")
    model = ModelWrapper(path)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    meta = export["layers"]
    if len(nodes) != len(meta):
        raise BnnError("%s: %d Conv/Gemm layers, but export.json describes %d" % (path, len(nodes), len(meta)))
    layers = []
    for i, (node, m) in enumerate(zip(nodes, meta)):
        producer = model.find_producer(node.input[1])
        w = model.get_initializer(producer.input[0] if producer is not None else node.input[1])
        bias = model.get_initializer(node.input[2]) if len(node.input) > 2 else None
        if w is None or bias is None or list(w.shape) != list(m["weight_shape"]):
            raise BnnError("%s: layer %s is not a binary layer with integer threshold of shape %s"
                           % (path, m["name"], m["weight_shape"]))
        threshold = np.round(-bias.astype(np.float64)).astype(np.int64)
        if not np.array_equal(threshold, -bias.astype(np.float64)):
            raise BnnError("%s: layer %s has non-integer thresholds" % (path, m["name"]))
        layers.append(IntLayer(
            name=m["name"], kind=m["kind"], weight=np.where(w >= 0, 1, -1).astype(np.int8), threshold=threshold,
            input_max=255 if i == 0 else 1, stride=int(m["stride"]), padding=int(m["padding"]),
            pad_value=float(m["pad_value"]), pool=tuple(int(v) for v in m["pool"]) if m["pool"] else None))
    if backbone_digest(layers) != export["backbone_digest"]:
        raise BnnError("%s: weights and thresholds do not match export.json's backbone_digest" % path)
    return layers


# ------------------------------------------------------------------------------------ fps search


def search_max_fps(onnx: str, finn_dir: str, flow_cfg, log) -> Tuple[Dict, List[Dict]]:
    """Highest target fps whose estimate fits FINN's margins; the FINN dir ends at that folding.

    Doubles the target from 250 img/s until an estimate leaves the margins (or the achieved fps
    stops growing: fully parallel), tries three points between the last fit and that one, and
    refolds at the winner (with HW codegen if asked). Returns (its estimates, one row per point).
    When nothing fits the margins, the smallest folding is kept: the fit check then decides.
    """
    from dataclasses import replace

    from .flow import check_fit, refold, run_flow

    def estimate(fps, first=False):
        c = replace(flow_cfg, target_fps=fps, hw_codegen=False)
        est = run_flow(onnx, finn_dir, c) if first else refold(finn_dir, c)
        rows.append(sweep_row(fps, est))
        log("build_fpga:   target %6d img/s -> %8.0f img/s, LUT %s, BRAM18 %s%s" % (
            fps, est["fps"], _pct(est["lut"]), _pct(est["bram18"]), "" if rows[-1]["fits_margins"] else "  (over)"))
        return est

    rows: List[Dict] = []
    last_fit, first_over, prev_fps = None, None, None
    for i, fps in enumerate(COARSE_FPS):
        est = estimate(fps, first=i == 0)
        if check_fit(est):
            first_over = fps
            break
        last_fit = fps
        if prev_fps is not None and est["fps"] <= prev_fps:
            break  # no more parallelism to add
        prev_fps = est["fps"]
    if last_fit is None:
        # Even 250 img/s leaves the margins: fall back to FINN's minimal folding (target 1 img/s).
        est = estimate(1)
    elif first_over is not None:
        for k in REFINE_STEPS:
            estimate(int(round(last_fit * k)))
    fitting = [r for r in rows if r["fits_margins"]]
    best = max(fitting, key=lambda r: (r["fps"], -r["target_fps"])) if fitting else min(rows, key=lambda r: r["fps"])
    best["chosen"] = True
    est = refold(finn_dir, replace(flow_cfg, target_fps=best["target_fps"]))
    est["target_fps"] = best["target_fps"]
    return est, rows


def sweep_row(target_fps: int, est: Dict) -> Dict:
    from .flow import check_fit

    row = {"target_fps": int(target_fps), "fps": round(float(est["fps"]), 1), "bottleneck": est["bottleneck"],
           "fits_margins": not check_fit(est), "fits_board": not check_fit(est, margins=False), "chosen": False}
    for r in ("lut", "bram18", "uram", "dsp"):
        row[r] = est[r]["used"]
        row[r + "_pct"] = round(100.0 * est[r]["used"] / est[r]["available"], 1) if est[r]["available"] else None
    return row


def fit_refusal(est: Dict, out: str, mode: str) -> Optional[str]:
    """One line when the estimate exceeds 100% of a resource (the build is refused), else None.

    ``mode``: how the folding was chosen ("default" search, "fps" target, folding "file"), for the hint.
    """
    from .flow import check_fit

    if not check_fit(est, margins=False):
        return None
    r = next(k for k in ("lut", "bram18", "uram", "dsp") if est[k]["used"] is not None
             and est[k]["used"] > est[k]["available"])
    pct = 100.0 * est[r]["used"] / est[r]["available"] if est[r]["available"] else float("inf")
    hint = {"default": "even FINN's smallest folding is too big: use a smaller preset or a larger board",
            "fps": "use a lower --target-fps or a smaller preset",
            "file": "lower PE/SIMD in the folding file, or use a smaller preset"}[mode]
    return ("%s: the design does not fit the %s at %.0f img/s: %s needs %s of %s (%.0f%%); %s"
            % (out, est["board"], est["fps"], r.upper(), format(est[r]["used"], ","),
               format(est[r]["available"], ","), pct, hint))


# ------------------------------------------------------------------------- bit-exactness ladder


def verification_images(n: int, input_size: int, seed: int = VERIFY_SEED) -> np.ndarray:
    """``n`` seeded random uint8 NHWC images (the same on every machine)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, input_size, input_size, 3), dtype=np.uint8)


def _rows(a: np.ndarray, nchw: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4 and nchw:
        a = a.transpose(0, 2, 3, 1)  # compare in the accelerator's NHWC order
    return a.reshape(a.shape[0], -1)


def torch_stage(layers, images_nhwc: np.ndarray) -> List[np.ndarray]:
    """Per-layer outputs of the torch integer backbone (the reference), NHWC rows."""
    import torch

    from train.freeze import IntegerBackbone

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).astype(np.float32))
    return [_rows(o.numpy(), nchw=True) for o in IntegerBackbone(layers)(x, return_all=True)]


def qonnx_stage(model, images_nhwc: np.ndarray) -> List[np.ndarray]:
    from export.qonnx_graph import execute

    x = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).astype(np.float32)
    return [_rows(o, nchw=True) for o in execute(model, x, all_layers=True)]


def finn_stage(model, images_nhwc: np.ndarray) -> List[np.ndarray]:
    from .flow import finn_layer_outputs

    return finn_layer_outputs(model, np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def emulator_stage(emulator, images_nhwc: np.ndarray) -> List[np.ndarray]:
    return [_rows(o, nchw=False) for o in emulator.layer_outputs(images_nhwc)]


def compare_stage(reference: List[np.ndarray], got: List[np.ndarray], names: List[str]) -> Dict:
    """Mismatched feature bits and the first layer whose outputs differ from the reference."""
    if len(got) != len(reference):
        return {"images": int(reference[-1].shape[0]), "mismatched_bits": -1, "bits": int(reference[-1].size),
                "first_divergence": "%d layers instead of %d" % (len(got), len(reference))}
    first = None
    for name, r, g in zip(names, reference, got):
        if r.shape != g.shape or not np.array_equal(r, g):
            first = name
            break
    final_r, final_g = reference[-1], got[-1]
    bad = int(np.count_nonzero(final_r != final_g)) if final_r.shape == final_g.shape else -1
    return {"images": int(final_r.shape[0]), "mismatched_bits": bad, "bits": int(final_r.size),
            "first_divergence": first}


def divergence_message(stage: str, result: Dict, where: str) -> Optional[str]:
    if result["first_divergence"] is None and result["mismatched_bits"] == 0:
        return None
    return ("%s: %s differs from the torch integer backbone, first at layer %s (%d of %d feature bits differ "
            "over %d images)" % (where, stage, result["first_divergence"], result["mismatched_bits"],
                                 result["bits"], result["images"]))


def verify_build(layers, finn_dir: str, hw_model, finn_arrays, n_images: int, export: Dict, out: str, log) -> Dict:
    """FINN streamlined, FINN HW and emulator vs the torch integer backbone; BnnError on a difference."""
    from qonnx.core.modelwrapper import ModelWrapper

    from host.emulator import Emulator

    from .flow import despecialize

    result = {"reference": "torch integer backbone (train.freeze.IntegerBackbone)", "seed": VERIFY_SEED,
              "images": int(n_images), "qonnx_at_export": export.get("verify"), "stages": {}}
    if n_images == 0:
        return result
    names = [il.name for il in layers]
    images = verification_images(n_images, int(export["preprocess"]["input_size"]))
    t0 = time.time()
    ref = torch_stage(layers, images)
    stages = [
        ("FINN streamlined graph", "finn_streamlined", lambda: finn_stage(
            ModelWrapper(os.path.join(finn_dir, "intermediate_models", "step_streamline.onnx")), images)),
        ("FINN HW graph", "finn_hw", lambda: finn_stage(despecialize(hw_model), images)),
        ("emulator", "emulator", lambda: emulator_stage(Emulator(*finn_arrays), images)),
    ]
    for label, key, run in stages:
        res = compare_stage(ref, run(), names)
        result["stages"][key] = res
        msg = divergence_message(label, res, out)
        if msg:
            raise BnnError(msg)
    log("build_fpga: bit-exact on %d images: FINN streamlined, FINN HW and emulator == torch (%.0f s)"
        % (n_images, time.time() - t0))
    return result

