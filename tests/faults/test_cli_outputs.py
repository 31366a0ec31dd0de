"""What a user's --out may be: the commands refuse, in one line, to replace anything they did not write."""

import os
import subprocess
import sys

import pytest

from train.calibrate import calibrated_random_model
from train.models import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--option", "n_train_per_class=4", "--option", "n_test_per_class=2", "--option", "num_classes=3"]


def cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env)


def one_line_error(r, code=2):
    """The command failed with ``code`` and one "error: " line, the last on stderr (progress bars may precede it)."""
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert r.returncode == code and errors == lines[-1:] and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    return lines[-1]


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, str(root))] = None if os.path.isdir(p) else open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.export.test_export import write_run

    tmp = tmp_path_factory.mktemp("faults-run")
    model = calibrated_random_model(ModelConfig(preset="tiny", num_classes=3), seed=1)
    return write_run(tmp / "run", model, ["a", "b", "c"])


def test_export_into_the_working_directory_or_the_run_deletes_nothing(tiny_run, tmp_path):
    work = tmp_path / "work"
    (work / "project").mkdir(parents=True)
    (work / "data.csv").write_text("1,2\n")
    (work / "project" / "main.py").write_text("print()\n")
    before, run_before = snapshot(tmp_path), snapshot(tiny_run)
    line = one_line_error(cli("export", "backbone", "--run", tiny_run, "--out", ".", "--verify-images", "2",
                              cwd=str(work)))
    assert "holds no bnn-transfer manifest; refusing to replace it" in line
    line = one_line_error(cli("export", "backbone", "--run", tiny_run, "--out", tiny_run, "--verify-images", "2"))
    assert "run: exists, is not empty and holds no bnn-transfer manifest" in line  # a checkpoint alone
    assert snapshot(tmp_path) == before and snapshot(tiny_run) == run_before


def test_train_refuses_a_foreign_directory(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "metrics.jsonl").write_text("my own notes\n")
    before = snapshot(tmp_path)
    line = one_line_error(cli("train", "fit", "--out", str(user), "--epochs", "1", "--workers", "0", *SMALL))
    assert "mine: exists, is not empty and is not a training run (no checkpoint.pt in it)" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_train_epoch_range_is_one_line_and_leaves_nothing(tmp_path, epochs):
    line = one_line_error(cli("train", "fit", "--out", str(tmp_path / "r"), "--epochs", epochs, *SMALL))
    assert "--epochs %s: must be >= 1" % epochs in line
    assert os.listdir(tmp_path) == []


def test_unwritable_out_is_one_line_naming_the_file(tiny_run, tmp_path):
    line = one_line_error(cli("export", "backbone", "--run", tiny_run, "--out", "/proc/x/export"))
    assert line.startswith("error: /proc/x") and "Traceback" not in line
    r = cli("export", "backbone", "--run", tiny_run, "--out", "/proc/x/export", "--debug")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == line


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/proc/mounts"), reason="mounting a tmpfs needs root")
def test_full_disk_in_train_and_export_keeps_the_earlier_artifacts(tiny_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        line = one_line_error(cli("train", "fit", "--out", str(disk / "run"), "--epochs", "1", "--workers", "0",
                                  *SMALL))
        assert "No space left on device" in line and str(disk) in line
        assert os.listdir(str(disk / "run")) == []  # no half-written checkpoint
        line = one_line_error(cli("export", "backbone", "--run", tiny_run, "--out", str(disk / "export"),
                                  "--verify-images", "2"))
        assert "No space left on device" in line and str(disk) in line
        assert not os.path.exists(str(disk / "export"))
        assert [n for n in os.listdir(str(disk)) if n.startswith(".")] == []
    finally:
        subprocess.run(["umount", str(disk)])
