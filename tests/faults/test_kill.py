"""kill -9 in the middle of train, export, build_fpga and host fit, then the same command again.

Each test kills a real ``python -m`` process at a point where it is writing its output (found by
watching the file system, so the point is the same on every run), then checks that the earlier good
artifact is still valid, that nothing but the target changed, and that a rerun (in-process, through
the same error boundary) completes and leaves no temporary file or lock behind.
"""

import glob
import os
import subprocess
import sys
import time

import pytest

from bnn_transfer.host.cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--option", "n_train_per_class=8", "--option", "n_test_per_class=2", "--option", "num_classes=3"]


def start(stage, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("BOARD", None)
    return subprocess.Popen([sys.executable, "-m", stage, *[str(a) for a in args]], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc, ready, timeout=300):
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it ends or times out first."""
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail("the command ended (rc %s) before the kill point: %s" % (proc.returncode, proc.stderr.read()))
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point not reached in %d s" % timeout)
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    proc.stderr.close()


def rerun(capsys, stage, *args):
    import importlib

    capsys.readouterr()
    rc = run_cli(importlib.import_module("bnn_transfer." + stage + ".__main__").main, [str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 0, err


def leftovers(parent):
    """Temporary files, directories and locks of this flow anywhere under ``parent``."""
    return sorted(p for p in glob.glob(os.path.join(str(parent), "**", ".*"), recursive=True)
                  if ".bnn-" in p or p.endswith(".lock"))


def neighbours(parent):
    """Something of the user's next to the output: it must come through untouched."""
    (parent / "neighbour").mkdir(parents=True, exist_ok=True)
    (parent / "neighbour" / "notes.txt").write_text("the user's")
    return lambda: (parent / "neighbour" / "notes.txt").read_text() == "the user's"


def test_train_killed_mid_epoch_keeps_its_checkpoint_refuses_a_second_writer_and_resumes(tmp_path, capsys):
    from bnn_transfer.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    intact = neighbours(tmp_path)
    args = ["fit", "--out", out, "--epochs", "3", "--batch-size", "8", "--workers", "0", *SMALL]
    proc = start("train", *args)
    kill_when(proc, lambda: (out / "run.json").exists())  # epoch 1 recorded, epoch 2 running
    assert load_checkpoint(out)["epoch"] >= 1  # the last complete epoch survived
    assert set(os.listdir(str(out))) - {"checkpoint.pt", "metrics.jsonl", "curves.png", "run.json"} <= {
        n for n in os.listdir(str(out)) if ".bnn-tmp-" in n}
    rerun(capsys, "train", *args, "--resume")
    assert load_checkpoint(out)["epoch"] == 3 and leftovers(tmp_path) == [] and intact()


def test_second_train_into_the_same_run_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start("train", "fit", "--out", out, "--epochs", "50", "--workers", "0", *SMALL)
    try:
        t0 = time.time()
        while not os.path.exists(str(tmp_path / ".run.lock")) and time.time() - t0 < 120:
            time.sleep(0.05)
        capsys.readouterr()
        from bnn_transfer.train.__main__ import main

        rc = run_cli(main, ["fit", "--out", str(out), "--epochs", "1", "--workers", "0", *SMALL])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "run: another command is writing it right now" in err[0]
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_export_killed_while_writing_keeps_the_earlier_export(export_dir, capsys):
    from bnn_transfer.export.backbone import load_export

    tmp, run, out = export_dir
    intact = neighbours(tmp)
    args = ["backbone", "--run", run, "--out", out, "--verify-images", "3"]
    proc = start("export", *args)
    kill_when(proc, lambda: glob.glob(str(tmp / ".export.bnn-tmp-*" / "backbone.onnx")))
    assert load_export(str(out))["params"]["verify_images"] == 2  # the earlier export, whole
    assert glob.glob(str(tmp / ".export.bnn-tmp-*"))  # what the next run must clean
    rerun(capsys, "export", *args)
    assert load_export(str(out))["params"]["verify_images"] == 3 and leftovers(tmp) == [] and intact()


@pytest.mark.skipif(pytest.importorskip("qonnx", reason="needs qonnx") is None, reason="needs qonnx")
def test_build_fpga_killed_during_finn_keeps_the_earlier_bundle(export_dir, tmp_path, capsys):
    pytest.importorskip("finn", reason="needs finn-plus")
    from bnn_transfer.host.bundle import load_bundle
    from tests.host.fake_pynq import make_bundle

    _, _, export = export_dir
    out = tmp_path / "deploy"
    make_bundle(out)  # an earlier bundle of this flow (another export)
    before = load_bundle(str(out)).digest
    intact = neighbours(tmp_path)
    args = ["--export", export, "--board", "pynq-z2", "--out", out, "--estimate-only", "--target-fps", "1000",
            "--verify-images", "0"]
    proc = start("build_fpga", *args)
    kill_when(proc, lambda: glob.glob(str(tmp_path / ".deploy.bnn-finn-*" / "finn" / "*")))
    assert load_bundle(str(out)).digest == before
    rerun(capsys, "build_fpga", *args)
    assert load_bundle(str(out)).preset == "tiny" and load_bundle(str(out)).digest != before
    assert leftovers(tmp_path) == [] and intact()


def test_host_fit_killed_before_writing_keeps_the_earlier_head(tmp_path, capsys):
    from bnn_transfer.host.heads import load_head
    from tests.host.fake_pynq import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    head = tmp_path / "heads" / "head.npz"
    data = ["--dataset", "synthetic-transfer", "--option", "n_train_per_class=40", "--option", "num_classes=4",
            "--backend", "emulator", "--quiet"]
    rerun(capsys, "host", "fit", "--bundle", bundle, "--out", head, *data)
    first = load_head(str(head))
    intact = neighbours(tmp_path / "heads")
    args = ["fit", "--bundle", bundle, "--out", head, *data, "--head-type", "mlp", "--solver-option", "epochs=400",
            "--solver-option", "patience=400", "--no-cache"]
    proc = start("host", *args)
    kill_when(proc, lambda: os.path.exists(str(tmp_path / "heads" / ".head.npz.lock")))
    assert load_head(str(head)).variant == first.variant == "float"
    rerun(capsys, "host", *args)
    assert load_head(str(head)).variant == "mlp" and leftovers(tmp_path) == [] and intact()
