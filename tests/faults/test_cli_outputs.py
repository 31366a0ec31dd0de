"""What a user's --out may be: the commands refuse, in one line, to replace anything they did not write.

The commands run in-process through the same error boundary as ``python -m`` (``host.cli.run_cli``),
which keeps this suite cheap; tests/faults/test_kill.py runs real processes.
"""

import os
import subprocess

import pytest

from bnn_transfer.host.cli import run_cli
from tests.faults.fsutil import snapshot
from tests.host.fake_pynq import make_bundle

SMALL = ["--option", "n_train_per_class=4", "--option", "n_test_per_class=2", "--option", "num_classes=3"]


def command(stage):
    import importlib

    return importlib.import_module("bnn_transfer." + stage + ".__main__").main


def cli(capsys, stage, *args):
    """(exit code, stderr) of ``python -m stage args`` run in-process."""
    capsys.readouterr()
    rc = run_cli(command(stage), [str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line_error(result, code=2):
    """The command failed with ``code`` and one "error: " line, the last on stderr (progress bars may precede it)."""
    rc, err = result
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc == code and errors == lines[-1:] and "Traceback" not in err, (rc, err)
    return lines[-1]


def test_export_into_the_working_directory_or_the_run_deletes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    (work / "project").mkdir(parents=True)
    (work / "data.csv").write_text("1,2\n")
    (work / "project" / "main.py").write_text("print()\n")
    before, run_before = snapshot(tmp_path), snapshot(tiny_run)
    monkeypatch.chdir(work)
    line = one_line_error(cli(capsys, "export", "backbone", "--run", tiny_run, "--out", ".", "--verify-images", "2"))
    assert "holds no bnn-transfer manifest; refusing to replace it" in line
    line = one_line_error(cli(capsys, "export", "backbone", "--run", tiny_run, "--out", tiny_run))
    assert "run: exists, is not empty and holds no bnn-transfer manifest" in line  # a checkpoint alone
    (work / "head.npz").write_text("the user's own file")
    line = one_line_error(cli(capsys, "export", "head", "--run", tiny_run, "--out", "head.npz"))
    assert "head.npz: exists and is not a head written by this flow; refusing to replace it" in line
    os.unlink(str(work / "head.npz"))
    assert snapshot(tmp_path) == before and snapshot(tiny_run) == run_before


def test_build_fpga_refuses_a_user_directory_before_running_finn(export_dir, tmp_path, capsys):
    pytest.importorskip("finn", reason="build_fpga needs finn-plus")
    _, _, export = export_dir
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "mine.txt").write_text("mine")
    (user / "sub" / "x").write_text("also mine")
    before = snapshot(tmp_path)
    line = one_line_error(cli(capsys, "build_fpga", "--export", export, "--board", "pynq-z2", "--out", user,
                              "--estimate-only"))
    assert "userdir: exists, is not empty and holds no bnn-transfer manifest; refusing to replace it" in line
    assert snapshot(tmp_path) == before

    # the FINN working folder: --build-dir, or the DEPLOY_DIR.finn-build a kept build uses
    line = one_line_error(cli(capsys, "build_fpga", "--export", export, "--board", "pynq-z2", "--out",
                              tmp_path / "deploy", "--estimate-only", "--build-dir", user))
    assert "userdir: --build-dir holds files build_fpga did not write (no .bnn-transfer-build in it)" in line
    os.rename(str(user), str(tmp_path / "deploy.finn-build"))
    before = snapshot(tmp_path)
    line = one_line_error(cli(capsys, "build_fpga", "--export", export, "--board", "pynq-z2", "--out",
                              tmp_path / "deploy", "--estimate-only", "--hw-codegen"))
    assert "deploy.finn-build: the kept build folder holds files build_fpga did not write" in line
    assert snapshot(tmp_path) == before


def test_train_refuses_a_foreign_directory(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "metrics.jsonl").write_text("my own notes\n")
    before = snapshot(tmp_path)
    line = one_line_error(cli(capsys, "train", "fit", "--out", user, "--epochs", "1", "--workers", "0", *SMALL))
    assert "mine: exists, is not empty and is not a training run (no checkpoint.pt in it)" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag, value, want", [("--epochs", "0", ">= 1"), ("--epochs", "-1", ">= 1"),
                                               ("--batch-size", "0", ">= 1"), ("--lr", "-0.1", "> 0 and finite")])
def test_train_argument_ranges_are_one_line_and_leave_nothing(tmp_path, capsys, flag, value, want):
    line = one_line_error(cli(capsys, "train", "fit", "--out", tmp_path / "r", flag, value, *SMALL))
    assert line == "error: %s %r: must be %s" % (flag, float(value) if flag == "--lr" else int(value), want)
    assert os.listdir(str(tmp_path)) == []


def test_unwritable_out_is_one_line_naming_the_file_and_debug_shows_the_traceback(tiny_run, capsys, monkeypatch):
    line = one_line_error(cli(capsys, "export", "backbone", "--run", tiny_run, "--out", "/proc/x/export"))
    assert line.startswith("error: /proc/x")
    rc, err = cli(capsys, "train", "fit", "--out", "/proc/x/run", "--debug", *SMALL)
    assert rc == 2 and "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "error: /proc/x")
    monkeypatch.setenv("BNN_DEBUG", "1")
    rc, err = cli(capsys, "export", "backbone", "--run", tiny_run, "--out", "/proc/x/export")
    assert rc == 2 and "Traceback (most recent call last)" in err


def test_a_bug_is_one_line_with_exit_code_1(capsys, monkeypatch):
    import bnn_transfer.train.fit as fit
    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(fit, "run", bug)
    line = one_line_error(cli(capsys, "train", "fit", "--out", "x", *SMALL), code=1)
    assert line.startswith("error: internal error, please report it: KeyError: 'oops' (rerun with --debug")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_in_train_and_export_names_the_file_and_leaves_nothing(tiny_run, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        line = one_line_error(cli(capsys, "train", "fit", "--out", disk / "run", "--epochs", "1", "--workers", "0",
                                  *SMALL))
        assert line == "error: %s: No space left on device" % (disk / "run" / "checkpoint.pt")
        assert os.listdir(str(disk / "run")) == []  # no half-written checkpoint
        line = one_line_error(cli(capsys, "export", "backbone", "--run", tiny_run, "--out", disk / "export",
                                  "--verify-images", "2"))
        assert line.startswith("error: %s" % (disk / "export")) and line.endswith(": No space left on device")
        assert os.listdir(str(disk)) == ["run"]
        with open(str(disk / "filler"), "wb", buffering=0) as f:  # fill the disk: even a small head cannot fit
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        bundle = make_bundle(tmp_path / "bundle")
        line = one_line_error(cli(capsys, "host", "fit", "--bundle", bundle, "--dataset", "synthetic-transfer",
                                  "--option", "n_train_per_class=6", "--out", disk / "h.npz", "--no-cache", "--quiet"))
        assert line == "error: %s: No space left on device" % (disk / "h.npz")
        assert sorted(os.listdir(str(disk))) == ["filler", "run"]
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.parametrize("stage, args, what", [
    ("train", ["fit", "--epochs", "x"], "python -m train fit: argument --epochs: invalid int value: 'x'"),
    ("train", ["fit", "--dataset", "synthetic+bogus"],
     "python -m train fit: argument --dataset: dataset 'bogus': unknown"),
    ("export", ["nope"], "python -m export: argument COMMAND: invalid choice: 'nope'"),
    ("build_fpga", ["--board"], "python -m build_fpga: argument --board: expected one argument"),
    ("host", ["eval", "--bundle"], "python -m host eval: argument --bundle: expected one argument"),
    ("demo", ["--bogus"], "python -m demo: unrecognized arguments: --bogus"),
    ("bench", ["--threads", "0"], "python -m bench: --threads must be >= 1"),
])
def test_usage_errors_are_one_line_like_any_bad_input(capsys, stage, args, what):
    line = one_line_error(cli(capsys, stage, *args))
    assert line.startswith("error: " + what) and line.endswith("(see %s --help)" % what.split(":")[0])


def test_cppsim_zero_is_refused_rather_than_doing_nothing(capsys):
    line = one_line_error(cli(capsys, "build_fpga", "--export", "x", "--board", "pynq-z2", "--out", "y",
                              "--cppsim", "0"))
    assert line == "error: --cppsim 0: give a positive number of images, or leave --cppsim out"
