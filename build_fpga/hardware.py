"""The with-Vivado path: FINN's hardware steps (HLS IP, FIFOs, stitched IP, Zynq shell, synthesis,
bitstream, PYNQ driver) continued from the folded, verified graph our estimate flow left.

The build resumes. Its folder (:func:`hardware_dir`) is named after what decides the hardware (export,
board, the folding FINN applied, clock, FIFO strategy) and is kept. Each step records on entry that
the one before it finished (FINN has saved that step's model by then) in ``progress.json``; a rerun
starts FINN at the first unfinished step (``DataflowBuildConfig.start_step``); within HLS IP
generation, the layers an interrupted run finished are not synthesized again
(:class:`AttachFinishedHLSIP`). ``clean`` starts over.
FINN's log streams to ``build_dataflow.log`` in that folder (earlier attempts' logs move to
``logs/``); the terminal gets one line per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from qonnx.transformation.base import Transformation

from bnn_transfer.host.atomic import write_json_atomic

from .config import BuildConfig
from .finn_env import finn_session
from .finn_flow import FlowError, dataflow_config, run_dataflow
from .steps import FOLDING_CONFIG, flow_steps

# What FINN's Zynq flow produces after the estimates: IP, stitched design, bitstream, PYNQ driver.
HARDWARE_OUTPUTS = ("ESTIMATE_REPORTS", "STITCHED_IP", "BITFILE", "PYNQ_DRIVER")
PROGRESS = "progress.json"


def hardware_steps() -> List[str]:
    """FINN's default build steps after the estimate reports, with step_generate_hardware as its three
    parts (HW codegen, HLS IP generation, FIFO sizing; its fourth, recursing into FINNLoop bodies, has
    nothing to do in our loop-free graphs) so a build stopped during the hours of HLS resumes there;
    then stitched IP, ZynqBuild synthesis + bitstream, driver."""
    from finn.builder.build_dataflow_config import default_build_dataflow_steps as steps

    hw = list(steps[steps.index("step_generate_estimate_reports") + 1 :])
    i = hw.index("step_generate_hardware")
    hw[i : i + 1] = ["step_hw_codegen", "step_hw_ipgen", "step_set_fifo_depths"]
    return hw


class AttachFinishedHLSIP(Transformation):
    """Point each HLS layer whose IP an earlier, interrupted run already exported (``project_<node>/sol1``
    under the layer's code folder, with its synthesis report) at that IP, as Vitis HLS's success would
    have: FINN's HLSSynthIP then skips it instead of synthesizing it again."""

    def apply(self, model):
        from finn.util.fpgadataflow import is_hls_node
        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if not is_hls_node(node):
                continue
            inst = getCustomOp(node)
            code = inst.get_nodeattr("code_gen_dir_ipgen")
            project = Path(code) / ("project_" + node.name) if code else None
            if (project is None or inst.get_nodeattr("ipgen_path")
                    or not (project / "sol1" / "impl" / "ip" / "component.xml").is_file()
                    or not (project / "sol1" / "syn" / "report" / (node.name + "_csynth.xml")).is_file()):
                continue
            inst.set_nodeattr("ipgen_path", str(project))
            inst.set_nodeattr("ip_path", str(project / "sol1" / "impl" / "ip"))
            inst.set_nodeattr("ip_vlnv", "xilinx.com:hls:%s:1.0" % node.name)  # what ipgen_singlenode_code sets
        return model, False


def _start_model_step() -> str:
    # The estimate flow's last step without codegen: its model holds no paths into that flow's
    # (re-created) build folder, so the hardware build generates its code in its own.
    return flow_steps(hw_codegen=False)[-1].__name__


# Our code that runs inside FINN's flow and shapes the hardware (the steps, their graph transformations,
# the weight placement): a change to it must not reuse HLS IP built before.
STEP_SOURCES = ("steps.py", "transforms.py", "external_weights.py")


def hardware_key(export_sha: str, est_dir, cfg: BuildConfig, toolchain: Dict) -> str:
    """Digest of what decides the hardware: export, board, FINN's applied folding, clock, FIFO strategy,
    the tool versions (Vivado, Vitis HLS, finn-plus) and the source of our FINN steps."""
    from importlib.metadata import version

    folding = Path(est_dir) / "report" / FOLDING_CONFIG  # the folding as estimated, weight memory included
    h = hashlib.sha256()
    for part in (export_sha, cfg.board, "%g" % cfg.clock(), str(cfg.mvau_wwidth_max), cfg.fifo,
                 str(toolchain.get("vivado")), str(toolchain.get("vitis_hls")), version("finn-plus")):
        h.update(part.encode() + b"\0")
    h.update(folding.read_bytes() if folding.exists() else b"")
    for name in STEP_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def hardware_dir(root, key: str) -> Path:
    return Path(root) / ("hw-" + key)


def prune_hardware_dirs(keep: Path, log: Callable[[str], None]) -> None:
    """Remove the other ``hw-*`` folders beside ``keep`` (builds of an earlier export, folding, clock or
    toolchain: each holds gigabytes of Vivado projects), saying so."""
    for old in sorted(keep.parent.glob("hw-*")):
        if old.is_dir() and old.name != keep.name:
            shutil.rmtree(old, ignore_errors=True)
            log("build_fpga: removed the earlier hardware build %s" % old)


def _read_progress(hw_dir: Path, steps: List[str]) -> List[str]:
    """The hardware steps finished in an earlier run of this folder (a prefix of ``steps``)."""
    try:
        done = json.loads((hw_dir / PROGRESS).read_text())["finished"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(done, list) or done != steps[: len(done)]:
        return []
    models = hw_dir / "intermediate_models"
    last = done[-1] if done else _start_model_step()
    return done if (models / (last + ".onnx")).exists() else []


def _tracked(name: str, index: int, steps: List[str], hw_dir: Path, log: Callable[[str], None], t0: List[float]):
    """FINN's step ``name`` wrapped so that entering it records the steps before it as finished."""
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    step = build_dataflow_step_lookup[name]
    stderr = sys.stderr  # FINN replaces sys.stderr by its timestamping logger while it runs

    def run(model, cfg):
        now = time.time()
        write_json_atomic(str(hw_dir / PROGRESS), {"finished": steps[:index]})
        prev = " (%s: %.0f s)" % (steps[index - 1], now - t0[0]) if index and t0[0] else ""
        with contextlib.redirect_stderr(stderr):
            log("build_fpga: hardware step %d/%d %s%s" % (index + 1, len(steps), name, prev))
        t0[0] = now
        if name == "step_hw_ipgen":
            model = model.transform(AttachFinishedHLSIP())
        return step(model, cfg)

    run.__name__ = name  # FINN names the step's saved model and its time after __name__
    return run


# FINN's Zynq shell adds its deps' board_files to the project's and Vivado's board repositories here.
_SHELL_BOARD_REPO = 'lappend paths_param "$BOARDFILES$"\n'


@contextlib.contextmanager
def shell_board_repos(folders: Sequence[str]):
    """FINN's Zynq shell template with ``folders`` also added to ``BOARD_PART_REPO_PATHS`` and
    ``board.repoPaths``, as it adds its own deps' board_files (FINN has no option for more)."""
    from finn.transformation.fpgadataflow import templates

    original = templates.custom_zynq_shell_template
    if folders:
        if original.count(_SHELL_BOARD_REPO) != 1:
            raise FlowError("FINN's Zynq shell template no longer adds board repositories the way this build "
                            "extends it (%r); --board-repo cannot be passed on" % _SHELL_BOARD_REPO.strip())
        # the template is %-formatted by FINN: a literal % would break it (config.check refuses one)
        extra = "".join("lappend paths_prop {%s}\nlappend paths_param {%s}\n" % (f, f) for f in folders)
        templates.custom_zynq_shell_template = original.replace(_SHELL_BOARD_REPO, _SHELL_BOARD_REPO + extra)
    try:
        yield
    finally:
        templates.custom_zynq_shell_template = original


def run_hardware(est_dir, hw_dir, cfg: BuildConfig, log: Callable[[str], None] = lambda s: None,
                 clean: bool = False, board_repos: Sequence[str] = ()) -> Dict:
    """Continue a finished estimate build (``est_dir``) through synthesis in ``hw_dir`` (needs Vivado).

    Starts from the model our estimate steps left (``intermediate_models/step_bnn_io_shapes.onnx``:
    folded, bit-width-minimized dataflow child), so the hardware is exactly what was estimated and
    verified; resumes from ``hw_dir``'s last finished step unless ``clean``. Returns the paths of the
    ``.bit``, ``.hwh`` and driver directory, the ``io_shape_dict`` of FINN's ``driver/settings.json``,
    the steps run and resumed, and FINN's log.
    """
    est_dir, hw_dir = Path(est_dir).resolve(), Path(hw_dir).resolve()
    board = cfg.target
    start_name = _start_model_step()
    start_model = est_dir / "intermediate_models" / (start_name + ".onnx")
    if not start_model.exists():
        raise FlowError("%s: no finished estimate build to continue from" % est_dir)
    if clean and hw_dir.exists():
        shutil.rmtree(hw_dir)
    hw = hardware_steps()
    done = _read_progress(hw_dir, hw)
    models = hw_dir / "intermediate_models"
    if not done:
        shutil.rmtree(hw_dir, ignore_errors=True)  # nothing reusable: stale generated code would pile up
        models.mkdir(parents=True)
        shutil.copyfile(start_model, models / (start_name + ".onnx"))
    finn_log = hw_dir / "build_dataflow.log"
    todo = hw[len(done):]
    if todo and finn_log.exists():  # FINN truncates its log: keep each earlier attempt's
        (hw_dir / "logs").mkdir(exist_ok=True)
        finn_log.rename(hw_dir / "logs" / ("build_dataflow.%d.log" % len(list((hw_dir / "logs").iterdir()))))
    if done:
        log("build_fpga: resuming the hardware build in %s after %s (%d of %d steps done; --clean starts over)"
            % (hw_dir, done[-1], len(done), len(hw)))
    log("build_fpga: FINN's log: %s" % finn_log)
    wall = 0.0
    if todo:
        t0 = [0.0]
        tracked = [_tracked(s, i, hw, hw_dir, log, t0) for i, s in enumerate(hw)]
        steps = flow_steps(hw_codegen=False) + tracked
        dcfg = dataflow_config(hw_dir, cfg, board, steps=steps, start_step=todo[0], outputs=HARDWARE_OUTPUTS)
        with finn_session(hw_dir / "finn_build"), shell_board_repos([os.path.abspath(d) for d in board_repos]):
            wall = run_dataflow("", hw_dir, dcfg)
        write_json_atomic(str(hw_dir / PROGRESS), {"finished": hw})
        log("build_fpga: hardware steps done (%s: %.0f s)" % (hw[-1], time.time() - t0[0]))
    bit, hwh = hw_dir / "bitfile" / "finn-accel.bit", hw_dir / "bitfile" / "finn-accel.hwh"
    settings = hw_dir / "driver" / "settings.json"
    for p in (bit, hwh, settings):
        if not p.exists():
            raise FlowError("%s: FINN's hardware build finished without %s" % (hw_dir, p.name))
    info = json.loads(settings.read_text())["driver_information"]
    driver_model = models / "step_make_driver.onnx"
    if not driver_model.exists():
        raise FlowError("%s: FINN's hardware build finished without %s" % (hw_dir, driver_model.name))
    return {"bitfile": bit, "hwh": hwh, "driver_dir": hw_dir / "driver", "io": info["io_shape_dict"],
            "model": driver_model,
            "wall_s": round(wall, 1), "steps_run": todo, "resumed_after": done[-1] if done else None,
            "log": finn_log, "dir": hw_dir}


def copy_reports(hw: Dict, report_dir) -> None:
    """FINN's reports of the hardware build (post-synthesis resources, timing, FIFO sizes, HLS
    estimates, times per step) and its log into the estimate build's ``report_dir``, which the bundle's
    report/finn/ copies; a name the estimate build also wrote gets a ``hardware_`` prefix."""
    report_dir = Path(report_dir)
    for src in sorted((Path(hw["dir"]) / "report").iterdir()):
        if src.is_file():
            dst = report_dir / src.name
            shutil.copyfile(src, dst.with_name("hardware_" + src.name) if dst.exists() else dst)
    shutil.copyfile(hw["log"], report_dir / "hardware_build_dataflow.log")


def finn_deps_dir(build_dir) -> Optional[Path]:
    """FINN's deps folder as a build in ``build_dir`` would resolve it (settings file, FINN_DEPS)."""
    from .finn_env import finn_settings

    return finn_settings(build_dir).finn_deps


def preflight_hardware(cfg: BuildConfig, build_dir) -> Dict:
    """:func:`build_fpga.preflight.preflight` for ``cfg``'s board and FIFO strategy (BnnError if not ready)."""
    from .preflight import preflight

    return preflight(cfg.target.finn_board, cfg.fifo, finn_deps_dir(build_dir), os.environ,
                     board_repos=cfg.board_repos)
