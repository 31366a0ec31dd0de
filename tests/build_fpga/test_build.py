"""python -m build_fpga end to end: a real tiny export (random calibrated weights) -> pynq-z2 bundle.

The CLI runs as a subprocess, exactly as a user (and the one-command demo) runs it; the bundle is
judged by host/ (load_bundle, the emulator backend) against the torch integer backbone.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HAVE_FINN = all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx", "brevitas", "torch"))
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus, qonnx, brevitas and torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIVADO_NOTE = "synthesis and bitstream skipped: Vivado is not on PATH (estimates and emulator bundle written to %s)"


def cli(*args, tmp):
    # Vivado must look absent even on a machine that has it: this tests the offline path.
    env = {k: v for k, v in os.environ.items() if k not in ("XILINX_VIVADO", "PYTEST_CURRENT_TEST")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, "vivado")))
    env["TMPDIR"] = str(tmp)
    env["MPLCONFIGDIR"] = str(tmp / "mpl")
    return subprocess.run([sys.executable, "-m", "build_fpga", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def make_export(tmp, preset, seed=1, tie_prone=False):
    sys.path.insert(0, os.path.join(ROOT, "tests", "export"))
    from test_export import calibrated_model, write_run

    from bnn_transfer.export.backbone import ExportConfig, export_backbone
    from bnn_transfer.train.models import ModelConfig

    model = calibrated_model(ModelConfig(preset=preset, num_classes=5), seed=seed, tie_prone=tie_prone)
    run = write_run(tmp / "run", model, ["c%d" % i for i in range(5)])
    export_backbone(ExportConfig(run=run, out=str(tmp / "export"), verify_images=4), progress=lambda s: None)
    return model, str(tmp / "export")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    model, export = make_export(tmp, "tiny")
    return tmp, model, export


@pytest.fixture(scope="module")
def tiny(tiny_export):
    """The tiny export built into a pynq-z2 bundle at the default (highest fitting) fps, via the CLI."""
    tmp, model, export = tiny_export
    out = tmp / "deploy" / "pynq-z2"
    r = cli("--export", export, "--board", "pynq-z2", "--out", str(out), tmp=tmp)
    return {"tmp": tmp, "model": model, "export": export, "out": out, "run": r}


@pytest.mark.slow
def test_tiny_bundle_through_the_cli(tiny):
    from bnn_transfer.host.backends import make_backend
    from bnn_transfer.host.bundle import load_bundle
    from bnn_transfer.train.freeze import IntegerBackbone, fold_backbone

    r, out = tiny["run"], tiny["out"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == [VIVADO_NOTE % out]  # stdout is the one result line

    est = json.loads((out / "report" / "estimates.json").read_text())
    for key in ("board", "part", "clock_mhz", "fps", "latency_cycles", "layers", "notes"):
        assert key in est
    assert (est["board"], est["part"], est["clock_mhz"]) == ("pynq-z2", "xc7z020clg400-1", 100.0)
    for res, total in (("lut", 53200), ("ff", 106400), ("bram18", 280), ("dsp", 220), ("uram", 0)):
        assert est[res]["available"] == total
    assert est["ff"]["used"] is None and any("flip-flop" in n for n in est["notes"])
    # default folding: the search's, within every margin with FIFOs, width converters and DMAs counted
    assert 0 < est["lut"]["used"] <= 37240 and 0 < est["bram18"]["used"] <= 224 and est["dsp"]["used"] <= 176
    assert est["fps"] >= 10000 and est["latency_cycles"] > est["max_cycles"] > 0
    assert est["fps"] == pytest.approx(100e6 / est["max_cycles"])
    search = est["folding_search"]
    assert search["binding"] in ("lut", "bram18", "dsp", "parallelism") and search["fps"] == pytest.approx(est["fps"])
    assert [ly["layer"] for ly in est["layers"] if ly["op_type"].startswith("MVAU")] == \
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2"]
    # the 8-bit first layer runs on DSPs, its thresholds in a standalone node of the same layer
    conv1 = [ly for ly in est["layers"] if ly["layer"] == "conv1"]
    assert [ly["op_type"] for ly in conv1 if ly["dsp"]] == ["MVAU_rtl"] and "Thresholding_rtl" in \
        [ly["op_type"] for ly in conv1]
    kinds = [x["kind"] for x in est["interconnect"]]
    assert kinds.count("iodma") == 2 and "fifo" in kinds and "dwc" in kinds
    for r in ("lut", "bram18", "dsp"):
        assert est[r]["layers"] == sum(ly[r] for ly in est["layers"])
        assert est[r]["used"] == est[r]["layers"] + sum(x[r] for x in est["interconnect"])
    assert est["lut"]["interconnect"] > 0

    report = (out / "report" / "README.md").read_text()
    for text in ("| LUT | %s | 53,200 |" % format(est["lut"]["used"], ","), "70%", "layers.png",
                 "| FIFOs | %d |" % kinds.count("fifo"), "| IODMAs (our allowance) | 2 |", "folding search",
                 "Trade-off", "| conv1 |"):
        assert text in report
    assert (out / "report" / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report" / "bitexact.json").read_text())["stages"]["emulator"]["mismatched_bits"] == 0
    readme = (out / "README.md").read_text()
    scp = next(line for line in readme.splitlines() if line.startswith("scp -r "))
    board_part = sorted(set(os.listdir(out)) - {"pc"})
    assert scp.split()[2:-1] == board_part and "pc" in os.listdir(out)  # what the board needs, and only that
    notebooks = sorted(os.listdir(out / "notebooks"))
    for name in (n for n in notebooks if n.endswith(".ipynb")):  # listed from the files, teach.ipynb included
        assert "- `%s`: " % name in readme
    assert "sudo -i" in readme and "/usr/local/share/pynq-venv" in readme and "| 4.0 | 24.04 | 3.12 |" in readme

    b = load_bundle(str(out), board="Pynq-Z2")
    m = b.manifest
    assert (m["kind"], m["preset"], b.feature_width, b.input_shape) == ("bundle", "tiny", 256, (32, 32, 3))
    assert m["bitfile"] is None and m["hwh"] is None and m["onnx"] == "pc/backbone.onnx"
    assert b.onnx_path == os.path.join(b.root, "pc", "backbone.onnx")
    assert b.io["input_dma_name"] == ["idma0"] and b.io["idt"] == ["UINT8"] and b.io["odt"] == ["BIPOLAR"]
    assert m["inputs"]["export"]["sha256"] and m["backbone_digest"] == json.load(
        open(os.path.join(tiny["export"], "export.json")))["backbone_digest"]
    assert "host/emulator.py" in m["files"] and "report/finn/estimate_layer_resources.json" in m["files"]
    assert not any(f.endswith(".onnx") and f != "pc/backbone.onnx" for f in m["files"])  # no FINN intermediates
    # the board's copy: everything but pc/, as the README's scp line copies it
    board_copy = out.parent / "on-board"
    shutil.copytree(out, board_copy, ignore=lambda d, names: ["pc"] if d == str(out) else [])
    on_board = load_bundle(str(board_copy), board="Pynq-Z2")
    assert on_board.onnx_path is None and on_board.digest == b.digest
    shutil.rmtree(board_copy)
    assert not any("__pycache__" in f for f in m["files"])
    assert m["command"].startswith("python -m build_fpga")
    # Notebooks are carried but not hashed: saving one in the board's Jupyter must not break the bundle.
    nb = out / "notebooks" / "transfer_learning.ipynb"
    assert not any(f.startswith("notebooks/") for f in m["files"])
    nb.write_text(nb.read_text() + "\n")
    load_bundle(str(out))
    assert sorted(os.listdir(out.parent)) == ["pynq-z2"]  # the temporary FINN build dir is gone

    images = np.random.default_rng(7).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    got = make_backend("emulator", b).extract(images)
    import torch

    ref = IntegerBackbone(fold_backbone(tiny["model"]))(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(
        np.float32))).numpy()
    assert np.array_equal(got, ref.astype(np.int8))


@pytest.mark.slow
def test_second_run_is_skipped_and_folding_round_trips(tiny):
    out, tmp = tiny["out"], tiny["tmp"]
    assert tiny["run"].returncode == 0
    before = (out / "manifest.json").read_bytes()
    r = cli("--export", tiny["export"], "--board", "pynq-z2", "--out", str(out), tmp=tmp)
    assert r.returncode == 0 and r.stdout.strip() == "build_fpga: %s is up to date, skipping" % out
    assert (out / "manifest.json").read_bytes() == before

    folding = tmp / "folding.json"
    folding.write_bytes((out / "report" / "folding_config.json").read_bytes())
    again = tmp / "again"
    r = cli("--export", tiny["export"], "--board", "pynq-z2", "--out", str(again), "--folding", str(folding),
            "--verify-images", "1", tmp=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == VIVADO_NOTE % again
    a = json.loads((out / "report" / "estimates.json").read_text())
    b = json.loads((again / "report" / "estimates.json").read_text())
    for key in ("fps", "latency_cycles", "lut", "ff", "bram18", "uram", "dsp", "layers"):
        assert a[key] == b[key], key
    assert json.loads((again / "report" / "folding_config.json").read_text()) == json.loads(folding.read_text())
    assert json.loads((again / "manifest.json").read_text())["params"]["folding_sha256"]


@pytest.mark.slow
def test_a_design_that_does_not_fit_is_refused(tmp_path):
    _, export = make_export(tmp_path, "z2", seed=3)
    out = tmp_path / "deploy"
    r = cli("--export", export, "--board", "pynq-z2", "--out", str(out), "--target-fps", "20000", tmp=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == r.stderr.splitlines()[-1]
    assert "does not fit the pynq-z2" in errors[0] and "LUT needs" in errors[0]
    assert errors[0].endswith("use a lower --target-fps or a smaller preset")
    assert not [n for n in os.listdir(tmp_path) if "deploy" in n]  # no bundle, no build dir left behind


# ---------------------------------------------------------------------- one-line input errors


def run_main(argv, capsys):
    from bnn_transfer.build_fpga.__main__ import main
    from bnn_transfer.host.cli import run_cli

    rc = run_cli(main, argv)
    return rc, capsys.readouterr()


def test_unknown_board_and_missing_export_are_one_line_errors(tmp_path, capsys):
    rc, cap = run_main(["--export", str(tmp_path), "--board", "pynq-z3", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and cap.err.strip() == ("error: unknown board 'pynq-z3' (choose from pynq-z1, pynq-z2, ultra96, "
                                           "zcu104, kv260)")
    rc, cap = run_main(["--export", str(tmp_path / "none"), "--board", "pynq-z2", "--out", str(tmp_path / "o")],
                       capsys)
    assert rc == 2 and cap.err.strip().startswith("error: %s: export directory not found" % (tmp_path / "none"))
    rc, cap = run_main(["--export", str(tmp_path), "--board", "pynq-z2", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and cap.err.strip() == "error: %s: manifest not found" % (tmp_path / "export.json")
    assert not (tmp_path / "o").exists() and cap.out == ""


def test_tampered_export_and_bad_folding_are_refused(tiny_export, tmp_path, capsys):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(tiny_export[2], export)
    args = ["--export", str(export), "--board", "pynq-z2", "--out", str(tmp_path / "o")]
    bad = tmp_path / "fold.json"
    bad.write_text("[1, 2]")
    rc, cap = run_main(args + ["--folding", str(bad)], capsys)
    assert rc == 2 and cap.err.strip() == "error: %s: not a FINN folding config (a JSON object of node name -> " \
                                          "{PE, SIMD, ...})" % bad
    rc, cap = run_main(args + ["--folding", str(tmp_path / "missing.json")], capsys)
    assert rc == 2 and cap.err.strip() == "error: %s: folding config not found" % (tmp_path / "missing.json")
    rc, cap = run_main(args + ["--folding", str(bad), "--target-fps", "100"], capsys)
    assert rc == 2 and "exclude each other" in cap.err
    with open(export / "backbone.onnx", "ab") as f:
        f.write(b"\0")
    rc, cap = run_main(args, capsys)
    assert rc == 2 and cap.err.strip() == "error: %s: sha256 does not match %s (file changed or corrupt)" % (
        export / "backbone.onnx", export / "export.json")
    assert not (tmp_path / "o").exists()
