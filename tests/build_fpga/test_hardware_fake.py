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

import numpy as np
import pytest

HAVE = (all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx", "brevitas", "torch"))
        and shutil.which("tclsh") is not None)
pytestmark = pytest.mark.skipif(not HAVE, reason="needs finn-plus, torch and tclsh")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE / "fake_toolchain"))

import install  # noqa: E402

BOARDS = {"pynq-z2": ("Pynq-Z2", "xc7z020clg400-1"), "kv260": ("KV260_SOM", "xck26-sfvc784-2LV-c"),
          "ultra96": ("Ultra96-V2", "xczu3eg-sbva484-1-i"), "zcu104": ("ZCU104", "xczu7ev-ffvc1156-2-e")}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """One tiny export, a fake Vivado/Vitis HLS 2024.2 and FINN deps with the three boards' files."""
    from bnn_transfer.build_fpga.preflight import board_part

    sys.path.insert(0, str(HERE))
    from test_build import make_export

    tmp = tmp_path_factory.mktemp("fakehw")
    _, export = make_export(tmp, "tiny")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XILINX", "FINN_", "PYTEST", "FAKE_TOOLCHAIN")) and k != "LD_LIBRARY_PATH"}
    env.update(install.install(tmp / "Xilinx"))
    deps = install.deps(tmp / "finn_deps", [board_part(fb) for b, (fb, _) in BOARDS.items() if b != "zcu104"])
    env.update(FINN_DEPS=str(deps), HOME=str(tmp / "home"), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp / "mpl"))
    return {"tmp": tmp, "export": export, "env": env, "deps": deps}


def cli(fake, out, *extra, **env_extra):
    env = dict(fake["env"], FAKE_TOOLCHAIN_LOG=str(out) + ".calls", **env_extra)
    fps = [] if "--folding" in extra else ["--target-fps", "1000"]  # a folding file fixes the parallelism
    # a session of its own: the fake tool's simulated kill takes down the whole process group
    return subprocess.run([sys.executable, "-m", "build_fpga", "--export", fake["export"], "--out", str(out),
                           *fps, "--verify-images", "1", *extra], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def calls(out):
    p = Path(str(out) + ".calls")
    return p.read_text().splitlines() if p.exists() else []


def check_bundle(out, board):
    from bnn_transfer.build_fpga.preflight import board_part
    from bnn_transfer.host.bundle import load_bundle

    b = load_bundle(str(out))  # host/'s loader: manifest, hashes, bit/hwh pair
    finn_board, part = BOARDS[board]
    assert Path(b.bitfile_path).read_text().startswith(
        "fake bitstream of top_wrapper for %s (%s)" % (part, board_part(finn_board)))
    # the hardware handoff of FINN's block design: the PS of the part's family, FINN's IODMAs
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from fake_pynq import hwh_design

    text = Path(b.hwh_path).read_text()
    assert '<SYSTEMINFO ARCH="%s"' % ("zynq" if part.startswith("xc7z") else "zynquplus") in text
    assert hwh_design(text)[1] == ["idma0", "odma0"]
    m = b.manifest
    assert m["params"]["hardware"] is True and m["params"]["fifo"] == "force_minimal_fifos"
    assert m["hardware_build"]["toolchain"]["vivado"] == m["hardware_build"]["toolchain"]["vitis_hls"] == "2024.2"
    assert "driver/settings.json" in m["files"]
    timing = m["hardware_build"]["timing"]
    assert timing["met"] is True and timing["wns_ns"] == 0.25 and timing["target_mhz"] == m["clock_mhz"]
    assert timing["fmax_mhz"] == round(1000 / (1000 / m["clock_mhz"] - 0.25), 1)
    for name in ("post_synth_resources.json", "post_route_timing.rpt", "fifo_sizing.json",
                 "hardware_time_per_step.json", "hardware_build_dataflow.log"):
        assert "report/finn/" + name in m["files"]
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
    assert len(mvau_hls) == 6  # tiny's six XNOR layers, each through HLS once (conv1: RTL MVAU on DSPs)
    assert sum("vivado_zynq_proj_" in c for c in log) == 1
    assert "hardware step 11/11 step_deployment_package" in r.stderr


@pytest.mark.slow
def test_board_files_in_a_board_repo_reach_vivado(fake, tmp_path):
    """ZCU104's board files, which `finn deps update` does not fetch, in a folder of the user's: the
    pre-flight finds them there and Vivado (FINN's Zynq shell script) gets the folder too."""
    repo = tmp_path / "boards"
    install.board_xml(repo / "zcu104" / "1.1", "xilinx.com", "zcu104", "1.1")
    out = fake["tmp"] / "zcu104"
    r = cli(fake, out, "--board", "zcu104")
    assert r.returncode == 2 and "error: pre-flight: board files for ZCU104" in r.stderr and calls(out) == []
    r = cli(fake, out, "--board", "zcu104", "--board-repo", str(repo))
    assert r.returncode == 0, r.stderr[-3000:]
    check_bundle(out, "zcu104")


@pytest.mark.slow
def test_killed_hardware_build_resumes_from_its_last_finished_step(fake):
    """Killed in the middle of HLS IP generation (one worker: layers in a fixed order), the rerun starts at
    that step and synthesizes only the layers whose IP the first run had not finished."""
    out = fake["tmp"] / "pynq-z2"
    killed = cli(fake, out, "--board", "pynq-z2", FAKE_TOOLCHAIN_KILL="*hls_syn_MVAU_hls_3.tcl",
                 NUM_DEFAULT_WORKERS="1")
    assert killed.returncode == -9 and not out.exists(), killed.stderr[-3000:]
    hw = [d for d in Path(str(out) + ".finn-build").iterdir() if d.name.startswith("hw-")]
    assert len(hw) == 1
    assert json.loads((hw[0] / "progress.json").read_text())["finished"][-1] == "step_hw_codegen"
    exported = {p.parents[3].name[len("project_"):] for p in hw[0].glob(
        "finn_build/finn_tmp/code_gen_ipgen_MVAU_*/project_*/sol1/impl/ip/component.xml")}
    assert exported and "MVAU_hls_3" not in exported
    first = calls(out)
    r = cli(fake, out, "--board", "pynq-z2", NUM_DEFAULT_WORKERS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming the hardware build in %s after step_hw_codegen" % hw[0] in r.stderr
    assert "hardware step 2/11" not in r.stderr and "hardware step 3/11 step_hw_ipgen" in r.stderr
    again = [c for c in calls(out)[len(first):] if c.startswith("vitis_hls") and "code_gen_ipgen_MVAU" in c]
    redone = {c.rsplit("hls_syn_", 1)[1][: -len(".tcl")] for c in again}
    layers = {c.rsplit("hls_syn_", 1)[1][: -len(".tcl")] for c in calls(out) if "code_gen_ipgen_MVAU" in c}
    # each of tiny's HLS layers synthesized to the end exactly once over both runs
    assert "MVAU_hls_3" in redone and not redone & exported and redone | exported == layers
    assert (hw[0] / "logs" / "build_dataflow.0.log").exists() and (hw[0] / "build_dataflow.log").exists()
    check_bundle(out, "pynq-z2")


# Per board: the folding of tiny's fc1 (MVAU_hls_4) and fc2 (MVAU_hls_5); the DMAs (fc1's, fc2's, the image's)
# and runtime-writeable memories the bundle must list; the PYNQ parsers of the images the board runs.
RUNTIME_WEIGHTS = {
    # UltraScale+: fc1 streamed from DDR, fc2 in URAM, which the bitstream cannot initialise
    "kv260": ({"MVAU_hls_4": {"PE": 8, "SIMD": 16, "mem_mode": "external"},
               "MVAU_hls_5": {"PE": 8, "SIMD": 16, "ram_style": "ultra"}},
              ("idma0", None, "idma1"), ["pynq-4.0.0-pynqmetadata"]),
    # Zynq-7000 (no URAM): fc1 and fc2 streamed, as the paper preset on this board; PYNQ 2.7 and 3.1 images
    "pynq-z2": ({"MVAU_hls_4": {"PE": 8, "SIMD": 16, "mem_mode": "external"},
                 "MVAU_hls_5": {"PE": 8, "SIMD": 8, "mem_mode": "external"}},
                ("idma0", "idma1", "idma2"), ["pynq-2.7.0-hwh", "pynq-3.1.1-pynqmetadata"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("board", sorted(RUNTIME_WEIGHTS))
def test_weights_loaded_at_run_time_reach_a_bundle_the_host_runs(fake, board, monkeypatch):
    """The paper design's run-time weights, on tiny, through FINN's real hardware steps: fc1 (and on the
    Pynq-Z2 fc2) streamed from DDR by weight IODMAs; on the KV260 fc2 in URAM (runtime-writeable on
    UltraScale+). The bundle holds FINN's driver files for them, and the host's pynq backend, on a fake
    board whose overlay is the bundle's .hwh as the PYNQ of each image the board runs parses it, loads
    them where FINN's block design put them and returns the emulator's features."""
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    import pynq_twin
    from fake_pynq import FakeBoard, hwh_design

    from bnn_transfer.host.backends import make_backend
    from bnn_transfer.host.backends.pynq import read_runtime_words
    from bnn_transfer.host.bundle import load_bundle
    from bnn_transfer.host.emulator import load_emulator

    fold, (fc1_dma, fc2_dma, image_dma), parsers = RUNTIME_WEIGHTS[board]
    folding = fake["tmp"] / ("runtime_fold_%s.json" % board)
    folding.write_text(json.dumps(dict(fold, Defaults={})))
    out = fake["tmp"] / ("%s-runtime" % board)
    r = cli(fake, out, "--board", board, "--folding", str(folding))
    assert r.returncode == 0, r.stderr[-3000:]
    b = load_bundle(str(out))
    streams = [(fc1_dma, "fc1", 1)] + ([(fc2_dma, "fc2", 1)] if fc2_dma else [])
    assert [(e["dma"], e["layer"], e["repeats"]) for e in b.manifest["io"]["external_weights"]] == streams
    assert b.io["input_dma_name"] == [image_dma] and b.io["output_dma_name"] == ["odma0"]
    runtime = {}
    if fc2_dma is None:
        assert [(w.layer, os.path.basename(w.path)) for w in b.runtime_weights] == [
            ("fc2", "3_0_StreamingDataflowPartition_3_MVAU_hls_0.dat")]
        # ZynqBuild ends a partition at fc1, whose weights its IODMA feeds: fc2 sits in a partition of its own
        assert b.runtime_weights[0].ip == "StreamingDataflowPartition_3/s_axilite_0"
        assert "fc2 in URAM, written over AXI-lite" in b.manifest["weights_memory"]
        words = read_runtime_words(b.runtime_weights[0].path)
        assert words.size == 256 * 256 // 32  # fc2's 65,536 bits in 32-bit words (128-bit memory lines)
        runtime = {b.runtime_weights[0].ip: words}
    else:
        assert b.runtime_weights == () and "fc1 (%s" % fc1_dma in b.manifest["weights_memory"]
        # FINN's Zynq-7000 shell: its IODMAs' windows from 0x40000000 (M_AXI_GP0), in FINN's order, and
        # their DDR port S_AXI_HP0, as the .hwh says and each PYNQ of the board's images reads it
        text = Path(b.hwh_path).read_text()
        windows, dmas = hwh_design(text)
        assert windows == {"%s/s_axi_control_0" % d: (0x40000000 + 0x1000 * i, 0x1000)
                           for i, d in enumerate(["idma0", "idma1", "idma2", "odma0"])}
        assert dmas == ["idma0", "idma1", "idma2", "odma0"] and 'SLAVEBUSINTERFACE="S_AXI_HP0"' in text
        # behind them FINN's IODMAs at the Pynq-Z2's port width (pynq_native_port_width: 64 bits), the
        # weight streams in wrap mode (the same bytes again for every image)
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.custom_op.registry import getCustomOp

        (hw,) = Path(str(out) + ".finn-build").glob("hw-*")
        parent = ModelWrapper(str(hw / "intermediate_models" / "step_synthesize_bitfile.onnx"))
        iodmas = {getCustomOp(sdp).get_nodeattr("instance_name"): (getCustomOp(n).get_nodeattr("intfWidth"),
                                                                   getCustomOp(n).get_nodeattr("burstMode"))
                  for sdp in parent.graph.node
                  for n in ModelWrapper(getCustomOp(sdp).get_nodeattr("model")).graph.node if n.op_type == "IODMA_hls"}
        assert iodmas == {"idma0": (64, "wrap"), "idma1": (64, "wrap"), "idma2": (64, "increment"),
                          "odma0": (64, "increment")}
        for parser in parsers:
            if not pynq_twin.missing(parser):
                ip_dict = pynq_twin.parse(text, parser)
                assert {k: v["phys_addr"] for k, v in ip_dict.items() if k != "zynq_ps"} == {
                    d: base for d, (base, _) in ((k.split("/")[0], w) for k, w in windows.items())}, parser

    x = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    for parser in parsers:  # without the real pynq (.ci/install), PYNQ 2.7's naming rule (fake_pynq.hwh_names)
        parser = None if pynq_twin.missing(parser) else parser
        if runtime:
            # the fake Vivado's AXI-lite windows are 4 KiB (it answers ADDR_WIDTH 12): too small for fc2's
            # 8 KiB of URAM words, so this board's design is board_hwh's, for the manifest's DMAs and memories
            board_ = FakeBoard(b, weights={w.dma: (np.load(w.path), w.repeats) for w in b.external_weights},
                               runtime=runtime, parser=parser)
        else:
            # the bitstream's .hwh as Vivado wrote it for FINN's block design, FINN's driver's weight files
            board_ = FakeBoard.from_finn_build(b, parser=parser)
            assert sorted(board_.dmas) == sorted([fc1_dma, fc2_dma, image_dma, "odma0"])
        monkeypatch.setitem(sys.modules, "pynq", board_.module())
        with make_backend("pynq", b) as backend:
            assert np.array_equal(backend.extract(x), load_emulator(b.emulator_path).extract(x))
        assert board_.errors == [] and board_.runs == ([1, 3] if runtime else [3]), parser


@pytest.mark.slow
def test_a_missed_clock_refuses_the_bundle_unless_accepted(fake):
    """Vivado's routed design misses the KV260's 150 MHz default by 0.412 ns: exit 2 naming the clock it
    reaches and one to retry with; --accept-timing-violation then bundles the same hardware build (no
    tool runs again), records the violation, and removes the other hw-* folders of that build folder."""
    out = fake["tmp"] / "kv260-slow"
    r = cli(fake, out, "--board", "kv260", FAKE_TOOLCHAIN_WNS="-0.412")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and not out.exists(), r.stderr[-3000:]
    fmax = 1000 / (1000 / 150 + 0.412)  # FINN's estimate of the reachable clock: 141.3 MHz
    assert lines[-1].startswith("error: %s: the routed design misses its 150 MHz clock (worst negative slack "
                                "-0.412 ns, about %.0f MHz reached; " % (out, fmax))
    assert lines[-1].endswith("rebuild with --clock-mhz 140, or bundle it anyway with --accept-timing-violation "
                              "(it may compute wrong features on the board)")
    build = Path(str(out) + ".finn-build")
    stale = build / "hw-0123456789abcdef"
    stale.mkdir()
    tools = len(calls(out))
    r = cli(fake, out, "--board", "kv260", "--accept-timing-violation", FAKE_TOOLCHAIN_WNS="-0.412")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(calls(out)) == tools  # the hardware build was reused, not redone
    assert "timing VIOLATED (accepted): worst negative slack -0.412 ns at 150 MHz" in r.stderr
    assert "removed the earlier hardware build %s" % stale in r.stderr and not stale.exists()
    assert len(list(build.glob("hw-*"))) == 1
    from bnn_transfer.host.bundle import load_bundle

    timing = load_bundle(str(out)).manifest["hardware_build"]["timing"]
    assert timing["met"] is False and timing["wns_ns"] == -0.412 and timing["fmax_mhz"] == round(fmax, 1)


def test_the_resume_key_changes_with_the_toolchain_and_the_default_clock(tmp_path):
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.hardware import hardware_key

    cfg = BuildConfig(board="kv260")
    tools = {"vivado": "2024.2", "vitis_hls": "2024.2"}
    key = hardware_key("ab" * 32, tmp_path, cfg, tools)
    assert key == hardware_key("ab" * 32, tmp_path, BuildConfig(board="kv260", clock_mhz=150.0), tools)
    assert key != hardware_key("ab" * 32, tmp_path, cfg, {"vivado": "2022.2", "vitis_hls": "2022.2"})
    assert key != hardware_key("ab" * 32, tmp_path, BuildConfig(board="kv260", clock_mhz=100.0), tools)


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


def test_progress_is_trusted_only_as_a_prefix_of_the_steps_with_its_model(tmp_path):
    from bnn_transfer.build_fpga.hardware import PROGRESS, _read_progress, _start_model_step, hardware_steps

    steps = hardware_steps()
    models = tmp_path / "intermediate_models"
    models.mkdir()
    (tmp_path / PROGRESS).write_text(json.dumps({"finished": steps[:3]}))
    assert _read_progress(tmp_path, steps) == []  # the third step's model is missing
    (models / (steps[2] + ".onnx")).write_bytes(b"")
    assert _read_progress(tmp_path, steps) == steps[:3]
    (tmp_path / PROGRESS).write_text(json.dumps({"finished": [steps[1], steps[0]]}))
    assert _read_progress(tmp_path, steps) == []
    (tmp_path / PROGRESS).write_text('{"finished": [')
    assert _read_progress(tmp_path, steps) == []
    (tmp_path / PROGRESS).write_text(json.dumps({"finished": []}))
    assert _read_progress(tmp_path, steps) == []
    assert _start_model_step() == "step_bnn_io_shapes"
