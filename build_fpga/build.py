"""``python -m build_fpga``: an export directory -> FINN dataflow build -> deploy bundle.

What :func:`build` does, in order; every failure is one line (BnnError) and leaves no bundle:

1. Inputs: the export dir (every file hash-checked by ``load_export``), the board, the folding file.
   When DEPLOY_DIR already holds a valid bundle of the same export with the same parameters the
   build is skipped (the one-command demo reruns every stage).
2. Reference: the integer layers read back from ``backbone.onnx`` and ``export.json`` must hash to
   the export's ``backbone_digest``, i.e. be exactly the torch side's frozen integers (``ladder.py``).
3. FINN: the estimate flow (``finn_flow.run_flow``) at the chosen folding. Default: the folding search
   (``folding.search_max_fps``): the most img/s whose layers, FIFOs, width converters and DMAs stay
   within FINN's margins on every resource.
4. Fit: more than 100% of any resource refuses the build (exit 2) naming the resource (``estimates.py``);
   FIFOs, width converters and DMAs count.
5. Bit-exactness: on seeded random uint8 images, FINN's streamlined graph, FINN's HW graph and the
   bundle's emulator must equal the torch integer backbone layer by layer (``ladder.py``).
6. Bundle (``bundle.py``) and report (``report.py``), built under a temporary name.
7. With Vivado on PATH (and no ``--estimate-only``): before step 3, the pre-flight
   (``preflight.py``: tools, versions, FINN's deps, board files, FIFO-sizing prerequisites); after
   step 5, FINN's hardware steps, resumable (``hardware.py``), bitfile into the bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from bnn_transfer.host.artifacts import BACKBONE, BUNDLE_MANIFEST, EXPORT_MANIFEST
from bnn_transfer.host.atomic import make_temp_dir, output_lock
from bnn_transfer.host.bundle import BUNDLE_KIND
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import MAX_JSON_BYTES, atomic_dir, check_replaceable, manifest_digest, sha256_bytes

from . import hardware
from .config import BuildConfig
from .estimate import Estimate
from .finn_env import vivado_available, vivado_requested


@dataclass
class BuildResult:
    out: str
    skipped: bool
    hardware: bool  # a bitfile was built
    estimates: Optional[Estimate] = None  # None when the bundle was up to date
    build_dir: Optional[str] = None  # kept FINN working dir, or None when it was removed
    message: str = ""  # the one line the CLI prints


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build(cfg: BuildConfig, log: Callable[[str], None] = _stderr) -> BuildResult:
    """Run the whole stage; see the module docstring. ``log`` gets progress lines (default: stderr;
    stdout is silenced while FINN runs)."""
    from bnn_transfer.export.backbone import load_export

    cfg.check()
    headers = None
    if cfg.cppsim:
        from .hls_toolchain import find_headers

        headers = find_headers(cfg.hls_include)  # before anything runs: a missing header is one line
    out = os.path.abspath(cfg.out)
    export = load_export(cfg.export)
    folding_bytes = _read_folding(cfg.folding)
    with_vivado = not cfg.estimate_only and vivado_requested()
    export_sha = manifest_digest(cfg.export, EXPORT_MANIFEST)
    params = build_params(cfg, folding_bytes, with_vivado)
    with output_lock(out):  # one build per DEPLOY_DIR; a killed build's temporary FINN dir is removed here
        if up_to_date(out, export_sha, params):
            msg = "build_fpga: %s is up to date, skipping" % out
            return BuildResult(out, True, with_vivado, message=msg)
        check_replaceable(out, BUNDLE_MANIFEST, BUNDLE_KIND)  # now, not after minutes of FINN

        toolchain = None
        if with_vivado:  # before anything long runs (or anything is written)
            toolchain = hardware.preflight_hardware(cfg, cfg.build_dir or out + ".finn-build")
            log("build_fpga: pre-flight: Vivado %s, Vitis HLS %s, board part %s (%s), FIFO sizing %s" % (
                toolchain["vivado"], toolchain["vitis_hls"], toolchain["board_part"], toolchain["board_files"],
                cfg.fifo))
            for warning in toolchain["warnings"]:
                log("build_fpga: warning: pre-flight: %s" % warning)
        build_dir, keep = _build_dir(cfg, out, with_vivado)
        from .finn_flow import reused_heap

        try:
            with reused_heap():  # the ladder and the bundle copy and execute the paper preset's big graphs too
                return _build(_Job(cfg, out, export, export_sha, params, folding_bytes, toolchain, build_dir, keep,
                                   headers, log))
        finally:
            if not keep:
                shutil.rmtree(build_dir, ignore_errors=True)


@dataclass
class _Job:
    """One build's inputs, resolved by :func:`build` before FINN runs; each stage of :func:`_build` reads them."""

    cfg: BuildConfig
    out: str
    export: Dict
    export_sha: str
    params: Dict
    folding_bytes: Optional[bytes]
    toolchain: Optional[Dict]
    build_dir: str
    keep: bool
    headers: object
    log: Callable[[str], None]

    @property
    def finn_dir(self) -> str:
        return os.path.join(self.build_dir, "finn")


def _build(job: _Job) -> BuildResult:
    """Steps 2 to 7 of the module docstring, one function each."""
    from .ladder import reference_layers

    layers = reference_layers(job.cfg.export, job.export)
    names = [il.name for il in layers]
    est, run_cfg = _estimate(job, names)
    hw_model, finn_arrays, report_args = _verify(job, layers, names, est)
    from .external_weights import streamed_weights

    weight_streams = streamed_weights(hw_model, names)
    hw = _hardware(job, run_cfg, weight_streams, names) if job.toolchain is not None else None
    _write(job, est, finn_arrays, report_args, hw, weight_streams)
    cfg = job.cfg
    if hw is not None:
        msg = "build_fpga: bitstream and bundle written to %s" % job.out
    else:
        why = "--estimate-only was given" if cfg.estimate_only and vivado_available() else "Vivado is not on PATH"
        msg = "synthesis and bitstream skipped: %s (estimates and emulator bundle written to %s)" % (why, job.out)
    return BuildResult(job.out, False, hw is not None, est, job.build_dir if job.keep else None, msg)


def _estimate(job: _Job, names) -> Tuple[Estimate, BuildConfig]:
    """Steps 3 and 4: FINN's estimate at the chosen folding, refused over 100% of a resource or above the
    DDR bound; returns it with the config FINN's later steps run with (the folding as a file)."""
    from .finn_flow import run_flow
    from .folding import SEARCH_FOLDING, search_max_fps

    cfg, log, board = job.cfg, job.log, job.cfg.target
    onnx = os.path.join(cfg.export, BACKBONE)
    run_cfg = cfg
    if job.folding_bytes is not None:
        # FINN reads the folding from a file; the user's may live inside the DEPLOY_DIR this build replaces
        run_cfg = replace(cfg, folding=os.path.join(job.build_dir, "folding_input.json"))
        with open(run_cfg.folding, "wb") as f:
            f.write(job.folding_bytes)
    t0 = time.time()
    with _quiet_finn():
        if cfg.target_fps is None and job.folding_bytes is None:
            log("build_fpga: searching the folding with the most img/s within FINN's margins on %s" % board.name)
            est, _ = search_max_fps(onnx, job.finn_dir, run_cfg, names, log)
            mode = "folding search (default): %s binds" % est.folding_search.binding
            # from here on FINN's folding is the search's file, as with --folding (hardware key, resume)
            run_cfg = replace(run_cfg, folding=os.path.join(job.finn_dir, SEARCH_FOLDING))
        else:
            mode = "--folding %s" % cfg.folding if job.folding_bytes is not None else "--target-fps %d" % cfg.target_fps
            log("build_fpga: FINN estimate flow for %s with %s" % (board.name, mode))
            est = run_flow(onnx, job.finn_dir, run_cfg, names)
    est = replace(est, folding_mode=mode)
    refusal = est.fit_refusal(job.out, "file" if job.folding_bytes is not None else "fps" if cfg.target_fps
                              else "default")
    if refusal:
        raise BnnError(refusal)
    ddr_refusal(est, cfg, job.out)
    log("build_fpga: estimate %.0f img/s, LUT %s, BRAM18 %s, URAM %s, DSP %s with FIFOs, DWCs and IODMAs (%.0f s)"
        % (est.fps, est.lut.pct(), est.bram18.pct(), est.uram.pct(), est.dsp.pct(), time.time() - t0))
    if est.folding_search is not None:
        log("build_fpga: folding search stopped: %s" % est.folding_search.detail)
    if est.ddr_fps is not None:
        log("build_fpga: %s stream from DDR: %.1f MB per image over %.2f GB/s -> at most %.0f img/s (DDR bound)" % (
            ", ".join(est.ddr["streamed_layers"]), est.ddr["weight_bytes_per_image"] / 1e6,
            est.ddr["bytes_per_s"] / 1e9, est.ddr_fps))
    for line in est.check_fit():
        log("build_fpga: warning: %s: over FINN's recommended margin, timing closure may fail" % line)
    return est, run_cfg


def _verify(job: _Job, layers, names, est: Estimate):
    """Step 5: the bit-exactness ladder (and cppsim's rung with --cppsim); returns FINN's HW graph, the
    emulator arrays read from it and what the report needs. A failed cppsim rung writes its report into
    the kept working folder and refuses the bundle."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.export.emulator_weights import emulator_arrays

    from . import bundle, report
    from .finn_flow import extract_layers
    from .ladder import cppsim_message, cppsim_stage, verify_build

    cfg, finn_dir = job.cfg, job.finn_dir
    hw_model = ModelWrapper(os.path.join(finn_dir, "intermediate_models", "step_generate_estimate_reports.onnx"))
    input_size = int(job.export["preprocess"]["input_size"])
    finn_arrays = bundle.finn_emulator_arrays(extract_layers(hw_model), names, input_size)
    bundle.check_emulator(finn_arrays, emulator_arrays(layers, input_size), layers, job.out)
    bitexact = verify_build(layers, finn_dir, hw_model, finn_arrays, cfg.verify_images, job.export, job.out, job.log)
    report_args = dict(board=cfg.target, export=job.export, bitexact=bitexact, folding_file=_folding_source(finn_dir))
    if cfg.cppsim:
        bitexact["stages"]["cppsim"] = cppsim_stage(hw_model, job.build_dir, finn_arrays, names, cfg.cppsim,
                                                    input_size, job.headers, job.log)
        msg = cppsim_message(bitexact["stages"]["cppsim"], job.out)
        if msg:
            # No bundle (its hardware would not compute the emulator's features; DEPLOY_DIR is left as it
            # was), but the whole report, every rung included, in the kept working folder.
            from .cppsim import WORK

            report_dir = os.path.join(job.build_dir, WORK, "report")
            shutil.rmtree(report_dir, ignore_errors=True)  # ours, from an earlier failed run
            report.write_report(report_dir, est, finn_dir, hardware=False, **report_args)
            raise BnnError("%s; the report is in %s" % (msg, report_dir))
    return hw_model, finn_arrays, report_args


def _hardware(job: _Job, run_cfg: BuildConfig, weight_streams, names) -> Dict:
    """Step 7: FINN's hardware steps with Vivado, resumable; the routed design's timing checked."""
    cfg, log = job.cfg, job.log
    log("build_fpga: Vivado found: FINN hardware steps (HLS IP, FIFOs, stitching, synthesis, bitstream); "
        "this takes long and resumes if stopped")
    hw_dir = hardware.hardware_dir(job.build_dir, hardware.hardware_key(job.export_sha, job.finn_dir, run_cfg,
                                                                        job.toolchain))
    with _quiet_finn():
        hw = hardware.run_hardware(job.finn_dir, hw_dir, run_cfg, log=log, clean=cfg.clean,
                                   board_repos=job.toolchain["vivado_board_repos"])
    hw["toolchain"] = job.toolchain
    hw["timing"] = _checked_timing(hw_dir, cfg, job.out, log)
    hardware.prune_hardware_dirs(hw_dir, log)
    hardware.copy_reports(hw, os.path.join(job.finn_dir, "report"))
    hw["runtime_weights"] = _weights_loaded_at_run_time(hw, weight_streams, names)
    return hw


def _write(job: _Job, est: Estimate, finn_arrays, report_args, hw: Optional[Dict], weight_streams) -> None:
    """Step 6: the report and the bundle, under a temporary name renamed into place."""
    from . import bundle, report

    if hw is not None:
        io = hw["io"]  # FINN's own driver settings, after ZynqBuild inserted the DMAs
    else:
        with open(os.path.join(job.finn_dir, "report", "io_shapes.json"), encoding="utf-8") as f:
            io = json.load(f)
    with atomic_dir(job.out) as tmp:
        report.write_report(os.path.join(tmp, "report"), est, job.finn_dir, hardware=hw is not None, **report_args)
        bundle.write_bundle(
            tmp, export_dir=job.cfg.export, export=job.export, export_sha=job.export_sha, params=job.params,
            board=job.cfg.target, emulator=finn_arrays, io=io, estimates=est, hw=hw,
            build_dir=job.build_dir if job.keep else None, weight_streams=weight_streams)


def _checked_timing(hw_dir, cfg: BuildConfig, out: str, log) -> Dict:
    """Vivado's post-route timing of the hardware build; a missed clock refuses the bundle (exit 2) unless
    --accept-timing-violation. The hardware build stays, so either retry reuses or replaces it."""
    from .timing import read_timing, timing_refusal

    timing = read_timing(Path(hw_dir) / "report", cfg.clock())
    refusal = timing_refusal(timing, out, cfg.accept_timing_violation)
    if refusal:
        raise BnnError(refusal)
    log("build_fpga: timing %s: worst negative slack %.3f ns at %g MHz (about %.0f MHz reachable)" % (
        "met" if timing.met else "VIOLATED (accepted)", timing.wns_ns, timing.target_mhz, timing.fmax_mhz))
    return timing.to_dict()


def ddr_refusal(est: Estimate, cfg: BuildConfig, out: str) -> None:
    """BnnError when the weights streamed from DDR cannot keep up with the --target-fps asked for."""
    ddr = est.ddr
    if est.ddr_fps is None or cfg.target_fps is None or est.ddr_fps >= cfg.target_fps:
        return
    raise BnnError("%s: the %s cannot keep up with --target-fps %d: streaming %s from DDR moves %.1f MB per image "
                   "over %s (%.2f GB/s), at most %.0f img/s; lower the target, raise --clock-mhz, or use a board "
                   "with more on-chip memory" % (
                       out, est.board, cfg.target_fps, ", ".join(ddr["streamed_layers"]),
                       (ddr["weight_bytes_per_image"] + ddr["io_bytes_per_image"]) / 1e6, ddr["port"],
                       ddr["bytes_per_s"] / 1e9, ddr["fps"]))


def _read_folding(path: Optional[str]) -> Optional[bytes]:
    """The folding file's bytes, read now: it may live inside the DEPLOY_DIR this build replaces."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise BnnError("%s: folding config not found" % path) from None
    except OSError as e:
        raise BnnError("%s: cannot read the folding config (%s)" % (path, e)) from None
    if len(data) > MAX_JSON_BYTES:
        raise BnnError("%s: not a FINN folding config (larger than %d MB)" % (path, MAX_JSON_BYTES >> 20))
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BnnError("%s: not valid JSON (%s)" % (path, e)) from None
    if not isinstance(cfg, dict) or not any(isinstance(v, dict) for v in cfg.values()):
        raise BnnError("%s: not a FINN folding config (a JSON object of node name -> {PE, SIMD, ...})" % path)
    return data


def _weights_loaded_at_run_time(hw: Dict, weight_streams, names) -> list:
    """The runtime-writeable memories of the hardware build (``external_weights.runtime_weight_files``,
    with our layer names), after checking that FINN's driver streams exactly the weights our bundle
    carries: same weight DMAs, same bytes (the bundle's files are ours, FINN's layout re-implemented)."""
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    from .external_weights import runtime_weight_files
    from .finn_flow import FlowError

    driver = Path(hw["driver_dir"])
    finn_dmas = sorted(p.stem for p in (driver / "runtime_weights").glob("*.npy"))
    ours = sorted(w["dma"] for w in weight_streams)
    if finn_dmas != ours:
        raise FlowError("%s: FINN's driver streams weights through %s, the bundle through %s" % (
            driver, ", ".join(finn_dmas) or "no DMA", ", ".join(ours) or "no DMA"))
    for w in weight_streams:
        finn = np.load(driver / "runtime_weights" / (w["dma"] + ".npy"), allow_pickle=False)
        if not np.array_equal(np.asarray(finn, dtype=np.uint8).reshape(-1), w["data"]):
            raise FlowError("%s: FINN's weights for %s (%s) differ from the bundle's" % (driver, w["dma"], w["layer"]))
    return runtime_weight_files(ModelWrapper(str(hw["model"])), driver, names)


def build_params(cfg: BuildConfig, folding_bytes: Optional[bytes], with_vivado: bool) -> Dict:
    """What makes two builds of the same export identical (paths and the build dir do not)."""
    return {
        "board": cfg.board,
        "target_fps": cfg.target_fps,
        "folding_sha256": sha256_bytes(folding_bytes) if folding_bytes is not None else None,
        "clock_mhz": cfg.clock(),  # resolved: a new board default rebuilds
        "mvau_wwidth_max": int(cfg.mvau_wwidth_max),
        "estimate_only": bool(cfg.estimate_only),
        "hw_codegen": bool(cfg.hw_codegen),
        "verify_images": int(cfg.verify_images),
        "cppsim": int(cfg.cppsim),
        "hardware": bool(with_vivado),
        "fifo": cfg.fifo if with_vivado else None,
        "accept_timing_violation": bool(cfg.accept_timing_violation) if with_vivado else None,
    }


def up_to_date(out: str, export_sha: str, params: Dict) -> bool:
    if not os.path.exists(os.path.join(out, BUNDLE_MANIFEST)):
        return False
    from bnn_transfer.host.bundle import load_bundle

    try:
        m = load_bundle(out).manifest
    except BnnError:
        return False  # tampered or half-written: rebuild it
    return m.get("inputs", {}).get("export", {}).get("sha256") == export_sha and m.get("params") == params


def _build_dir(cfg: BuildConfig, out: str, with_vivado: bool) -> Tuple[str, bool]:
    """(FINN working dir, keep it). Kept when asked for, with --hw-codegen so Vivado users can resume,
    for a Vivado build, whose Vivado projects and logs are what one reads when synthesis fails, and
    with --cppsim, whose compiled layers are cached there (the next --cppsim compiles nothing)."""
    if cfg.build_dir:
        return _own_build_dir(os.path.abspath(cfg.build_dir), "--build-dir"), True
    parent, name = os.path.dirname(out), os.path.basename(out)
    os.makedirs(parent, exist_ok=True)
    if cfg.hw_codegen or with_vivado or cfg.cppsim:
        path = _own_build_dir(os.path.join(parent, name + ".finn-build"), "the kept build folder")
        # ours: stale generated code would pile up; the hardware builds (hw-*) are kept to resume,
        # the compiled cppsim layers (cppsim/) for the next --cppsim
        shutil.rmtree(os.path.join(path, "finn"), ignore_errors=True)
        return path, True
    return make_temp_dir(out, "finn-"), False


BUILD_DIR_MARKER = ".bnn-transfer-build"  # what makes a kept build folder ours, to write into and clean


def _own_build_dir(path: str, what: str) -> str:
    """``path``, created and marked as ours; an existing folder that is neither empty nor ours is refused:
    the build replaces its finn/ and hw-*/ sub-folders."""
    marker = os.path.join(path, BUILD_DIR_MARKER)
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(marker):
        raise BnnError("%s: %s holds files build_fpga did not write (no %s in it); choose an empty or new folder"
                       % (path, what, BUILD_DIR_MARKER))
    if os.path.exists(path) and not os.path.isdir(path):
        raise BnnError("%s: %s is a file, not a folder" % (path, what))
    os.makedirs(path, exist_ok=True)
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as f:
            f.write("a build folder of python -m build_fpga: it replaces finn/ and hw-*/ here\n")
    return path


def _folding_source(finn_dir: str) -> str:
    # The folding as estimated (after our weight memory step, which may move layers to URAM or widen a
    # weight stream to whole bytes), in FINN's auto_folding_config format: it round-trips via --folding.
    from .steps import FOLDING_CONFIG

    return os.path.join(finn_dir, "report", FOLDING_CONFIG)


@contextlib.contextmanager
def _quiet_finn():
    """FINN prints every step to stdout, which is reserved for the CLI's one result line; the same
    lines are in its build_dataflow.log (copied to report/finn/)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
