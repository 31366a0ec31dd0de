"""The with-Vivado path end to end on CPU: ``python -m build_fpga`` without --estimate-only, with the fake
toolchain (tests/build_fpga/fake_toolchain) on PATH, runs FINN's real hardware steps, which call
``vitis_hls`` / ``vivado`` on FINN's generated Tcl. What it proves and what not: fake_toolchain/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HAVE = (all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx", "brevitas", "torch"))
        and shutil.which("tclsh") is not None)
pytestmark = pytest.mark.skipif(not HAVE, reason="needs finn-plus, torch and tclsh")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE / "fake_toolchain"))

import install  # noqa: E402

BOARDS = {"pynq-z2": ("Pynq-Z2", "xc7z020clg400-1"), "kv260": ("KV260_SOM", "xck26-sfvc784-2LV-c"),
          "ultra96": ("Ultra96-V2", "xczu3eg-sbva484-1-i")}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """One tiny export, a fake Vivado/Vitis HLS 2024.2 and FINN deps with the three boards' files."""
    from build_fpga.preflight import board_part

    sys.path.insert(0, str(HERE))
    from test_build import make_export

    tmp = tmp_path_factory.mktemp("fakehw")
    _, export = make_export(tmp, "tiny")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XILINX", "FINN_", "PYTEST", "FAKE_TOOLCHAIN")) and k != "LD_LIBRARY_PATH"}
    env.update(install.install(tmp / "Xilinx"))
    deps = install.deps(tmp / "finn_deps", [board_part(fb) for fb, _ in BOARDS.values()])
    env.update(FINN_DEPS=str(deps), HOME=str(tmp / "home"), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp / "mpl"))
    return {"tmp": tmp, "export": export, "env": env, "deps": deps}


def cli(fake, out, *extra, **env_extra):
    env = dict(fake["env"], FAKE_TOOLCHAIN_LOG=str(out) + ".calls", **env_extra)
    # a session of its own: the fake tool's simulated kill takes down the whole process group
    return subprocess.run([sys.executable, "-m", "build_fpga", "--export", fake["export"], "--out", str(out),
                           "--target-fps", "1000", "--verify-images", "1", *extra], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def calls(out):
    p = Path(str(out) + ".calls")
    return p.read_text().splitlines() if p.exists() else []


def check_bundle(out, board):
    from build_fpga.preflight import board_part
    from host.bundle import load_bundle

    b = load_bundle(str(out))  # host/'s loader: manifest, hashes, bit/hwh pair
    finn_board, part = BOARDS[board]
    assert Path(b.bitfile_path).read_text().startswith(
        "fake bitstream of top_wrapper for %s (%s)" % (part, board_part(finn_board)))
    assert "fake hardware handoff of top" in Path(b.hwh_path).read_text()
    m = b.manifest
    assert m["params"]["hardware"] is True and m["params"]["fifo"] == "force_minimal_fifos"
    assert m["hardware_build"]["toolchain"]["vivado"] == m["hardware_build"]["toolchain"]["vitis_hls"] == "2024.2"
    assert "driver/settings.json" in m["files"]
    io = json.loads((out / "driver" / "settings.json").read_text())["driver_information"]["io_shape_dict"]
    assert m["io"]["ishape_normal"] == io["ishape_normal"] == [[1, 32, 32, 3]]


@pytest.mark.slow
@pytest.mark.parametrize("board", ["kv260", "ultra96"])
def test_bitstream_path_runs_end_to_end(fake, board):
    out = fake["tmp"] / board
    r = cli(fake, out, "--board", board)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "build_fpga: bitstream and bundle written to %s" % out
    check_bundle(out, board)
    log = calls(out)
    mvau_hls = [c for c in log if c.startswith("vitis_hls") and "hls_syn_MVAU_hls_" in c]
    assert len(mvau_hls) == 7  # tiny's seven layers, each through HLS once
    assert sum("vivado_zynq_proj_" in c for c in log) == 1
    assert "hardware step 9/9 step_deployment_package" in r.stderr


@pytest.mark.slow
def test_killed_hardware_build_resumes_from_its_last_finished_step(fake):
    out = fake["tmp"] / "pynq-z2"
    killed = cli(fake, out, "--board", "pynq-z2", FAKE_TOOLCHAIN_KILL="*vivado_zynq_proj_*")
    assert killed.returncode == -9 and not out.exists()
    first = calls(out)
    hw = [d for d in Path(str(out) + ".finn-build").iterdir() if d.name.startswith("hw-")]
    assert len(hw) == 1
    done = json.loads((hw[0] / "progress.json").read_text())["finished"]
    assert done[-1] == "step_prepare_synthesis"  # killed inside step_synthesize_bitfile
    r = cli(fake, out, "--board", "pynq-z2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming the hardware build in %s after step_prepare_synthesis" % hw[0] in r.stderr
    assert "hardware step 2/9" not in r.stderr and "hardware step 7/9 step_synthesize_bitfile" in r.stderr
    again = calls(out)[len(first):]
    assert not any("hls_syn_MVAU_hls_" in c for c in again)  # no layer went through HLS twice
    assert sum("vivado_zynq_proj_" in c for c in again) == 1
    assert (hw[0] / "logs" / "build_dataflow.0.log").exists() and (hw[0] / "build_dataflow.log").exists()
    check_bundle(out, "pynq-z2")


# The CLI with one piece removed (test_preflight.py covers every piece without the CLI).
REMOVALS = {
    "finn-hlslib": ("finn-hlslib not found in", lambda env, deps: shutil.rmtree(deps / "finn-hlslib")),
    "board-files": ("board files for Pynq-Z2", lambda env, deps: shutil.rmtree(deps / "board_files")),
}


@pytest.mark.parametrize("missing", sorted(REMOVALS))
def test_a_missing_precondition_stops_the_build_before_anything_runs(fake, tmp_path, missing):
    expected, remove = REMOVALS[missing]
    deps = tmp_path / "finn_deps"
    shutil.copytree(fake["deps"], deps)
    env = dict(fake["env"], FINN_DEPS=str(deps))
    remove(env, deps)
    out = tmp_path / "deploy"
    r = cli(dict(fake, env=env), out, "--board", "pynq-z2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: pre-flight: " + expected), r.stderr
    assert not out.exists() and not Path(str(out) + ".finn-build").exists() and calls(out) == []
