"""Progress goes to stderr, and off a terminal (a log file, a pipe) the bars stay sparse."""

import time

import pytest

import bnn_transfer.host.progress as progress
from bnn_transfer.host.progress import log, progress_bar


def test_status_lines_go_to_stderr(capsys):
    log("stage: working")
    out, err = capsys.readouterr()
    assert out == "" and err == "stage: working\n"


def _redraws(capsys):
    bar = progress_bar(40, "steps")  # capsys' stderr is not a terminal
    for _ in range(40):
        time.sleep(0.02)
        bar.update(1)
        bar.set_postfix(loss="0.5", refresh=False)
    bar.close()
    out, err = capsys.readouterr()
    assert out == ""
    return err.count("\r")


def test_bars_are_sparse_off_a_terminal(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    # a bar on a terminal redraws ~10 times a second; in a log each redraw is another line
    assert _redraws(capsys) <= 3
    monkeypatch.setattr(progress, "NON_TTY_INTERVAL_S", 0.1)
    assert _redraws(capsys) > 5  # the same loop at a terminal's pace: what the log would hold
