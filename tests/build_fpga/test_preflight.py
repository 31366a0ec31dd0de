"""Pre-flight of the with-Vivado path against the fake toolchain: complete -> nothing to report; each
precondition removed -> exactly its one line, naming how to get it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

HAVE = importlib.util.find_spec("finn") is not None and shutil.which("tclsh") is not None
pytestmark = pytest.mark.skipif(not HAVE, reason="needs finn-plus and tclsh")
sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_toolchain"))

import install  # noqa: E402

BOARD = "Pynq-Z2"


def _setup(tmp_path, version="2024.2"):
    from build_fpga.preflight import board_part

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_TOOL"))}
    env.update(install.install(tmp_path / "xil", version))
    deps = install.deps(tmp_path / "deps", [board_part(BOARD)])
    return env, deps


def test_complete_toolchain_passes_and_reports_versions(tmp_path):
    from build_fpga.preflight import check

    env, deps = _setup(tmp_path)
    found, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert problems == []
    assert found["vivado"] == found["vitis_hls"] == "2024.2"
    assert found["board_part"] == "tul.com.tw:pynq-z2:part0:1.0"


def _drop_path(env, tool):
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, tool)))


REMOVALS = {
    "vivado-off-path": (lambda env, deps: _drop_path(env, "vivado"), "vivado not found on PATH: source"),
    "no-XILINX_VIVADO": (lambda env, deps: env.pop("XILINX_VIVADO"), "XILINX_VIVADO is not set"),
    "vitis_hls-off-path": (lambda env, deps: _drop_path(env, "vitis_hls"), "vitis_hls not found on PATH"),
    "no-XILINX_HLS": (lambda env, deps: env.pop("XILINX_HLS"), "XILINX_HLS is not set"),
    "no-finn-hlslib": (lambda env, deps: shutil.rmtree(deps / "finn-hlslib"),
                       "finn-hlslib not found in %s (FINN's HLS layers include it): run `finn deps update"),
    "no-board-files": (lambda env, deps: shutil.rmtree(deps / "board_files"),
                       "board files for Pynq-Z2 (tul.com.tw:pynq-z2:part0:1.0) not found"),
}


@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_each_missing_piece_is_one_line(tmp_path, name):
    from build_fpga.preflight import check

    env, deps = _setup(tmp_path)
    remove, expected = REMOVALS[name]
    remove(env, deps)
    _, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert (expected % deps if "%s" in expected else expected) in problems[0]


def test_unsupported_and_mismatched_versions(tmp_path):
    from build_fpga.preflight import check

    env, deps = _setup(tmp_path, "2023.1")
    _, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert problems == ["Vivado 2023.1 is not one finn-plus 1.6.1 supports (2022.2 or 2024.2): source "
                        "<Xilinx>/Vivado/<version>/settings64.sh (2022.2 or 2024.2)"]
    env, deps = _setup(tmp_path / "b")
    hls22 = install.install(tmp_path / "other", "2022.2")
    env["PATH"] = os.pathsep.join([str(Path(hls22["XILINX_HLS"]) / "bin"), env["PATH"]])
    _, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert len(problems) == 1 and "is version 2022.2 but Vivado is 2024.2" in problems[0]


def test_fifo_simulation_prerequisites_are_checked_only_when_chosen(tmp_path):
    from build_fpga.preflight import check

    env, deps = _setup(tmp_path)
    env["LD_LIBRARY_PATH"] = ""
    assert check(BOARD, "force_minimal_fifos", deps, env)[1] == []
    problems = check(BOARD, "distributed_sim", deps, env)[1]
    assert any(p.startswith("nlohmann_json not found in %s" % deps) for p in problems)
    assert any(p.startswith("LD_LIBRARY_PATH lacks") for p in problems)
    assert all("--fifo force_minimal_fifos" in p or "LD_LIBRARY_PATH" in p for p in problems)


def test_preflight_raises_one_error_line_per_problem(tmp_path):
    from build_fpga.preflight import preflight
    from host.errors import BnnError

    env, deps = _setup(tmp_path)
    shutil.rmtree(deps / "finn-hlslib")
    shutil.rmtree(deps / "board_files")
    with pytest.raises(BnnError) as e:
        preflight(BOARD, "force_minimal_fifos", deps, env)
    lines = ("error: %s" % e.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("error: pre-flight: ") for line in lines)
