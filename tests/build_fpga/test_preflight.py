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
    from bnn_transfer.build_fpga.preflight import board_part

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_TOOL"))}
    env.update(install.install(tmp_path / "xil", version))
    deps = install.deps(tmp_path / "deps", [board_part(BOARD)])
    return env, deps


def test_complete_toolchain_passes_and_reports_versions(tmp_path):
    from bnn_transfer.build_fpga.preflight import check

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
    from bnn_transfer.build_fpga.preflight import check

    env, deps = _setup(tmp_path)
    remove, expected = REMOVALS[name]
    remove(env, deps)
    _, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert (expected % deps if "%s" in expected else expected) in problems[0]


def test_unsupported_and_mismatched_versions(tmp_path):
    from bnn_transfer.build_fpga.preflight import check

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
    from bnn_transfer.build_fpga.preflight import check

    env, deps = _setup(tmp_path)
    env["LD_LIBRARY_PATH"] = ""
    assert check(BOARD, "force_minimal_fifos", deps, env)[1] == []
    problems = check(BOARD, "distributed_sim", deps, env)[1]
    assert any(p.startswith("nlohmann_json not found in %s" % deps) for p in problems)
    assert any(p.startswith("LD_LIBRARY_PATH lacks") for p in problems)
    assert all("--fifo force_minimal_fifos" in p or "LD_LIBRARY_PATH" in p for p in problems)


def test_preflight_raises_one_error_line_per_problem(tmp_path):
    from bnn_transfer.build_fpga.preflight import preflight
    from bnn_transfer.host.errors import BnnError

    env, deps = _setup(tmp_path)
    shutil.rmtree(deps / "finn-hlslib")
    shutil.rmtree(deps / "board_files")
    with pytest.raises(BnnError) as e:
        preflight(BOARD, "force_minimal_fifos", deps, env)
    lines = ("error: %s" % e.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("error: pre-flight: ") for line in lines)


def test_board_files_where_vivado_ships_them(tmp_path):
    """ZCU104's board files exist only in Vivado's installed XilinxBoardStore, which `finn deps update`
    does not provide; Avnet's board.xml spells the board `Ultra96v2` where FINN's part says `ultra96v2`."""
    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.preflight import board_part, check

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_TOOL"))}
    env.update(install.install(tmp_path / "xil", "2024.2"))
    deps = install.deps(tmp_path / "deps", [])
    zcu104 = get_board("zcu104").finn_board
    found, problems = check(zcu104, "force_minimal_fifos", deps, env)
    assert len(problems) == 1 and "board files for ZCU104 (xilinx.com:zcu104:part0:1.1) not found" in problems[0]
    assert "Vivado's board store" in problems[0] and "--board-repo" in problems[0]
    xml = install.vivado_board_store(env["XILINX_VIVADO"], "Xilinx", "xilinx.com", "zcu104", "1.1")
    found, problems = check(zcu104, "force_minimal_fifos", deps, env)
    assert problems == [] and found["board_files"] == str(xml)

    ultra96 = get_board("ultra96").finn_board
    part = board_part(ultra96)
    assert part == "avnet.com:ultra96v2:part0:1.2"
    _, problems = check(ultra96, "force_minimal_fifos", deps, env)
    assert len(problems) == 1 and problems[0].endswith("run `finn deps update --accept-defaults`")
    install.board_xml(deps / "board_files" / "ultra96v2" / "1.2", "avnet.com", "Ultra96v2", "1.2")
    assert check(ultra96, "force_minimal_fifos", deps, env)[1] == []
    # Another version of the same board is not the one FINN's shell asks for.
    shutil.rmtree(deps / "board_files" / "ultra96v2")
    install.board_xml(deps / "board_files" / "ultra96v2" / "1.3", "avnet.com", "Ultra96v2", "1.3")
    assert len(check(ultra96, "force_minimal_fifos", deps, env)[1]) == 1


def test_board_repo_folders_and_the_user_board_store_are_searched(tmp_path):
    from bnn_transfer.build_fpga.preflight import check, user_board_store

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_TOOL"))}
    env.update(install.install(tmp_path / "xil", "2024.2"), HOME=str(tmp_path / "home"))
    deps = install.deps(tmp_path / "deps", [])
    install.board_xml(tmp_path / "mine" / "zcu104" / "1.1", "xilinx.com", "zcu104", "1.1")
    found, problems = check("ZCU104", "force_minimal_fifos", deps, env, board_repos=[str(tmp_path / "mine")])
    assert problems == [] and found["board_files"].startswith(str(tmp_path / "mine"))
    store = user_board_store(env["HOME"], "2024.2") / "xilinx_board_store" / "XilinxBoardStore" / "boards"
    install.board_xml(store / "Xilinx" / "zcu104" / "1.1", "xilinx.com", "zcu104", "1.1")
    found, problems = check("ZCU104", "force_minimal_fifos", deps, env)
    assert problems == [] and found["board_files"].startswith(str(user_board_store(env["HOME"], "2024.2")))
    # FINN's launcher keeps Vivado out of ~/.Xilinx (XILINX_LOCAL_USER_DATA=no): the store is passed on
    assert found["vivado_board_repos"] == [str(user_board_store(env["HOME"], "2024.2"))]


def test_simulation_needs_vivados_xsi_header_and_hlslib_off_its_pin_is_a_warning(tmp_path):
    import subprocess

    from bnn_transfer.build_fpga.preflight import check, finn_pinned_commit

    env, deps = _setup(tmp_path)
    (Path(env["XILINX_VIVADO"]) / "data" / "xsim" / "include" / "xsi.h").unlink()
    problems = check(BOARD, "distributed_sim", deps, env, startup_ld=env["XILINX_VIVADO"] + "/lib/lnx64.o")[1]
    assert [p for p in problems if "xsi.h" in p] == [
        "%s/data/xsim/include/xsi.h not found (FINN's simulator is compiled against Vivado's simulator interface): "
        "a Vivado install with its simulator is needed (FIFO sizing by simulation builds FINN's C++ simulator; or "
        "use --fifo force_minimal_fifos)" % env["XILINX_VIVADO"]]
    found, _ = check(BOARD, "force_minimal_fifos", deps, env)
    assert found["warnings"] == ["finn-hlslib in %s is at an unknown commit (not a git checkout), finn-plus pins %s: "
                                 "run `finn deps update --accept-defaults`" % (deps / "finn-hlslib",
                                                                              finn_pinned_commit("finn-hlslib")[:12])]
    if shutil.which("git") is None:
        return
    git = ["git", "-C", str(deps / "finn-hlslib"), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    found, problems = check(BOARD, "force_minimal_fifos", deps, env)
    assert problems == [] and len(found["warnings"]) == 1 and "finn-plus pins" in found["warnings"][0]
