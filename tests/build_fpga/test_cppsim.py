"""FINN's C++ simulation of the generated HLS layers (``--cppsim``), compiled with g++, no Xilinx install.

The open headers come from ``../shared/third_party`` beside the repository (finn-hlslib and the
ap_types headers; see its README): the tests skip without it or without g++. One tiny build (its FINN
working folder, hence its compiled-layer cache) is shared by the module, so only the first test
pays for g++ (~2 min on 2 idle cores); the negative control recompiles one layer.
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from test_build import HAVE_FINN, ROOT, cli, make_export

THIRD_PARTY = Path(os.environ.get("BNN_THIRD_PARTY", os.path.join(ROOT, "..", "shared", "third_party"))).resolve()
AP_INCLUDE = THIRD_PARTY / "ap_types" / "include"
HAVE_HEADERS = (AP_INCLUDE / "ap_int.h").is_file() and (THIRD_PARTY / "finn-hlslib" / "mvau.hpp").is_file()
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus, qonnx, brevitas and torch")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ on PATH")
needs_headers = pytest.mark.skipif(not HAVE_HEADERS, reason="needs the open HLS headers in %s (finn-hlslib, "
                                   "ap_types/include; see ../shared/third_party/README.md)" % THIRD_PARTY)
IMAGES = 2


def cli_without_vitis(*args, tmp, finn_deps):
    """The CLI as a user without Vitis HLS runs it, with FINN's deps folder at ``finn_deps``."""
    with mock.patch.dict(os.environ, {"FINN_DEPS": str(finn_deps)}):
        os.environ.pop("XILINX_HLS", None)
        return cli(*args, tmp=tmp)


def mvau_nodes(build):
    """The matrix-vector units of the build's HW graph in layer order (conv1 .. fc2)."""
    from qonnx.core.modelwrapper import ModelWrapper

    hw = ModelWrapper(str(build / "finn" / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    return [n.name for n in hw.graph.node if n.op_type.startswith("MVAU")]


@pytest.fixture(scope="module")
def tiny_cppsim(tmp_path_factory):
    """tiny -> pynq-z2 bundle through the CLI with --cppsim, its FINN working folder kept."""
    tmp = tmp_path_factory.mktemp("cppsim")
    _, export = make_export(tmp, "tiny")
    out, build = tmp / "deploy", tmp / "build"
    r = cli_without_vitis("--export", export, "--board", "pynq-z2", "--out", str(out), "--estimate-only",
                          "--target-fps", "1000", "--verify-images", "2", "--cppsim", str(IMAGES),
                          "--hls-include", str(AP_INCLUDE), "--build-dir", str(build), tmp=tmp, finn_deps=THIRD_PARTY)
    return {"tmp": tmp, "export": export, "out": out, "build": build, "run": r}


@needs_gxx
@needs_headers
@pytest.mark.slow
def test_tiny_hls_layers_compile_and_match_bit_for_bit(tiny_cppsim):
    r, out = tiny_cppsim["run"], tiny_cppsim["out"]
    assert r.returncode == 0, r.stderr[-3000:]
    rung = json.loads((out / "report" / "bitexact.json").read_text())["stages"]["cppsim"]
    assert rung["rung"] == "cppsim" and rung["images"] == IMAGES and rung["mismatched_bits"] == 0
    assert set(rung["mismatched_bits_per_layer"].values()) == {0}
    # every HLS matrix-vector unit compiled; the first layer's DSP (RTL) unit has no C++ model
    mvaus = mvau_nodes(tiny_cppsim["build"])
    assert len(mvaus) == 7 and len(rung["layers_compiled"]) >= 6
    assert rung["layers_compiled"] == [n for n in mvaus if n.startswith("MVAU_hls")]
    python = rung["layers_python"]
    assert all(python[n].startswith("RTL node") for n in mvaus if not n.startswith("MVAU_hls"))
    # Pool_hls does not compile with this finn-hlslib: it runs in python, named with the g++ error,
    # and so does the window generator feeding it; RTL nodes run FINN's python model.
    pools = [n for n in python if n.startswith("Pool_hls")]
    assert pools and all("does not compile" in python[p] and "error" in python[p] for p in pools)
    assert sum("feeding Pool_hls" in why for why in python.values()) == len(pools)
    assert "FMPadding_rtl_0" in python
    assert set(rung["compared_with"]) == {"emulator", "FINN HW graph, python"}
    report = (out / "report" / "README.md").read_text()
    assert "cppsim" in report and rung["layers_compiled"][-1] in report and "Pool_hls_0" in report


def zero_one_threshold(build):
    """(conv4's node, the bits that must flip, a ``cppsim.generate`` that sets one of its thresholds to 0 in
    the generated thresh.h): a channel that is -1 somewhere on verification image 0 becomes +1 everywhere."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from bnn_transfer.build_fpga import cppsim
    from bnn_transfer.build_fpga.ladder import finn_stage, verification_images
    from bnn_transfer.build_fpga.transforms import Despecialize

    hw = ModelWrapper(str(build / "finn" / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    node = mvau_nodes(build)[3]
    assert node.startswith("MVAU_hls")
    inst = getCustomOp(hw.get_node_from_name(node))
    pe, mh = inst.get_nodeattr("PE"), inst.get_nodeattr("MH")
    # NHWC: channel fastest
    conv4 = finn_stage(hw.transform(Despecialize()), verification_images(1, 32))[3].reshape(-1, mh)
    channel = int(np.flatnonzero((conv4 < 0).any(0))[0])
    entry = (channel % pe) * (mh // pe) + channel // pe  # thresh.h holds [PE][MH/PE][1]
    generate = cppsim.generate

    def generate_then_edit(hw_model, work, jobs=1):
        model = generate(hw_model, work, jobs)
        path = work / "nodes" / node / "thresh.h"
        head, body = path.read_text().split("=", 1)
        m = list(re.finditer(r"-?\d+", body))[entry]
        path.write_text(head + "=" + body[: m.start()] + "0" + body[m.end():])  # popcount >= 0: always +1
        return model

    return node, int((conv4[:, channel] < 0).sum()), generate_then_edit


@needs_gxx
@needs_headers
@pytest.mark.slow
def test_a_changed_threshold_in_the_generated_cpp_is_caught_at_its_layer(tiny_cppsim, monkeypatch):
    """Negative control: one threshold of conv4 set to 0 in its generated thresh.h must make the rung name
    conv4 as the first divergent layer, with exactly that channel's -1 bits flipped."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga import bundle, cppsim
    from bnn_transfer.build_fpga.finn_flow import extract_layers
    from bnn_transfer.build_fpga.hls_toolchain import find_headers
    from bnn_transfer.build_fpga.ladder import cppsim_message, cppsim_stage

    assert tiny_cppsim["run"].returncode == 0, tiny_cppsim["run"].stderr[-3000:]
    build = tiny_cppsim["build"]
    hw = ModelWrapper(str(build / "finn" / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2"]
    arrays = bundle.finn_emulator_arrays(extract_layers(hw), names, 32)
    headers = find_headers(hls_include=str(AP_INCLUDE), finn_deps=str(THIRD_PARTY), environ={})
    node, flips, generate_then_edit = zero_one_threshold(build)
    generate = cppsim.generate

    monkeypatch.setattr(cppsim, "generate", generate_then_edit)
    rung = cppsim_stage(hw, str(build), arrays, names, 1, 32, headers, log=lambda s: None)
    assert rung["compiled_now"] == [node]  # the other layers came from the cache
    assert rung["first_divergence"] == "conv4 (%s)" % node
    per_layer = rung["mismatched_bits_per_layer"]
    assert [per_layer[n] for n in names[:4]] == [0, 0, 0, flips]
    assert "first at layer conv4 (%s)" % node in cppsim_message(rung, "D")

    # the unedited sources map to their cached executables again: nothing compiles, nothing differs
    monkeypatch.setattr(cppsim, "generate", generate)
    rung = cppsim_stage(hw, str(build), arrays, names, 1, 32, headers, log=lambda s: None)
    assert rung["compiled_now"] == [] and cppsim_message(rung, "D") is None


@needs_gxx
@needs_headers
@pytest.mark.slow
def test_a_divergent_cppsim_fails_the_build_and_keeps_its_report(tiny_cppsim, monkeypatch):
    """The same edit through build(): BnnError naming the layer (exit 2 from the CLI), no bundle, and the
    whole report (every rung, the estimates) in the working folder."""
    from bnn_transfer.build_fpga import cppsim
    from bnn_transfer.build_fpga.build import build
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.host.errors import BnnError

    assert tiny_cppsim["run"].returncode == 0, tiny_cppsim["run"].stderr[-3000:]
    work = tiny_cppsim["build"]
    node, _, generate_then_edit = zero_one_threshold(work)
    monkeypatch.setattr(cppsim, "generate", generate_then_edit)
    monkeypatch.setenv("FINN_DEPS", str(THIRD_PARTY))
    monkeypatch.delenv("XILINX_HLS", raising=False)
    out = tiny_cppsim["tmp"] / "diverged"
    cfg = BuildConfig(export=tiny_cppsim["export"], board="pynq-z2", out=str(out), target_fps=1000,
                      estimate_only=True, verify_images=1, cppsim=1, hls_include=str(AP_INCLUDE), build_dir=str(work))
    with pytest.raises(BnnError, match=r"differs from the emulator and FINN HW graph, python, first at layer "
                                       r"conv4 \(%s\)" % node):
        build(cfg, log=lambda s: None)
    assert not out.exists()
    report = work / "cppsim" / "report"
    stages = json.loads((report / "bitexact.json").read_text())["stages"]
    assert stages["cppsim"]["first_divergence"] == "conv4 (%s)" % node
    assert stages["emulator"]["mismatched_bits"] == 0 and (report / "estimates.json").is_file()
    assert "**differs**, first at layer conv4" in (report / "README.md").read_text()


@pytest.mark.parametrize("case", ["nothing", "bad-include"])
def test_missing_headers_is_one_line_and_exit_2(tmp_path, case):
    export = tmp_path / "export"  # empty: the header check comes before anything is read or built
    export.mkdir()
    args = ["--export", str(export), "--board", "pynq-z2", "--out", str(tmp_path / "out"), "--cppsim", "2"]
    if case == "bad-include":
        args += ["--hls-include", str(tmp_path)]
    r = cli_without_vitis(*args, tmp=tmp_path, finn_deps=tmp_path / "deps")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cppsim: missing"), r.stderr
    assert "finn-hlslib in %s" % (tmp_path / "deps") in lines[0] and "finn deps update" in lines[0]
    assert "Vitis HLS" in lines[0] and "--hls-include" in lines[0]
    assert not (tmp_path / "out").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
