"""The fake toolchain refuses what the real tools would: FINN's own HLS Tcl template without
FINN_CUSTOM_HLS (the first failure of issue 18), an unresolvable finn-hlslib include, a board part
missing from the board repository, Vivado's libraries missing from LD_LIBRARY_PATH."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HAVE = importlib.util.find_spec("finn") is not None and shutil.which("tclsh") is not None
pytestmark = pytest.mark.skipif(not HAVE, reason="needs finn-plus and tclsh")
sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_toolchain"))

import install  # noqa: E402


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_", "LD_LIBRARY"))}
    env.update(install.install(tmp_path / "xil"))
    env["LD_LIBRARY_PATH"] = env["XILINX_VIVADO"] + "/lib/lnx64.o"
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _hls_project(tmp_path, deps):
    from finn.custom_op.fpgadataflow.templates import ipgentcl_template

    src = tmp_path / "code"
    src.mkdir()
    (src / "top_Layer_0.cpp").write_text('#include "bnn-library.h"\n#include "params.h"\nvoid Layer_0() {}\n')
    (src / "params.h").write_text("// generated weights\n")
    tcl = ipgentcl_template
    for key, value in {"$PROJECTNAME$": "project_Layer_0", "$HWSRCDIR$": str(src), "$FPGAPART$": "xc7z020clg400-1",
                       "$FINNHLSLIB$": str(deps / "finn-hlslib"), "$ATTENTIONHLSLIB$": str(deps / "attention-hlslib"),
                       "$TOPFXN$": "Layer_0", "$CLKPERIOD$": "10.0", "$DEFAULT_DIRECTIVES$": "",
                       "$EXTRA_DIRECTIVES$": "config_compile -pipeline_style frp"}.items():
        tcl = tcl.replace(key, value)
    (src / "hls_syn_Layer_0.tcl").write_text(tcl)
    return src


def _run(tool, script, cwd, env):
    return subprocess.run([tool, script], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=60)


def test_hls_runs_finns_template_and_needs_custom_hls_and_hlslib(tmp_path):
    deps = install.deps(tmp_path / "deps", [])
    src = _hls_project(tmp_path, deps)
    custom = os.path.join(os.path.dirname(importlib.util.find_spec("finn").origin), "custom_hls")
    bare = _run("vitis_hls", "hls_syn_Layer_0.tcl", src, _env(tmp_path))
    assert bare.returncode != 0 and 'no such variable\n    (read trace on "::env(FINN_CUSTOM_HLS)")' in bare.stderr
    ok = _run("vitis_hls", "hls_syn_Layer_0.tcl", src, _env(tmp_path, FINN_CUSTOM_HLS=custom))
    assert ok.returncode == 0, ok.stderr
    assert (src / "project_Layer_0" / "sol1" / "impl" / "ip" / "component.xml").exists()
    assert (src / "project_Layer_0" / "sol1" / "syn" / "report" / "Layer_0_csynth.xml").exists()
    shutil.rmtree(deps / "finn-hlslib")
    missing = _run("vitis_hls", "hls_syn_Layer_0.tcl", src, _env(tmp_path, FINN_CUSTOM_HLS=custom))
    assert missing.returncode != 0 and "bnn-library.h: No such file or directory" in missing.stderr
    no_ld = _run("vitis_hls", "hls_syn_Layer_0.tcl", src, _env(tmp_path, FINN_CUSTOM_HLS=custom, LD_LIBRARY_PATH=None))
    assert no_ld.returncode != 0 and "LD_LIBRARY_PATH lacks" in no_ld.stderr


def test_vivado_needs_the_board_part_in_a_board_repository(tmp_path):
    from finn.transformation.fpgadataflow.templates import custom_zynq_shell_template

    from bnn_transfer.build_fpga.preflight import board_part

    proj = tmp_path / "zynq"
    proj.mkdir()
    # FINN's Zynq shell up to the block design, with its board repository pointing at our deps.
    head = custom_zynq_shell_template.split('create_bd_design "top"')[0]
    head = head % (100, 1, 2, "KV260_SOM", "xck26-sfvc784-2LV-c")
    deps = tmp_path / "deps"
    (proj / "shell.tcl").write_text(head.replace("$BOARDFILES$", str(deps / "board_files")))
    install.deps(deps, [board_part("Pynq-Z2")])
    refused = _run("vivado", "shell.tcl", proj, _env(tmp_path))
    assert refused.returncode != 0
    assert "[Board 49-71] The board_part definition was not found for xilinx.com:kv260_som:part0:1.3" in refused.stderr
    install.deps(deps, [board_part("KV260_SOM")])
    assert _run("vivado", "shell.tcl", proj, _env(tmp_path)).returncode == 0
