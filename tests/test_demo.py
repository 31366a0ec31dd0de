"""The README's main job, end to end: python -m demo (quick sizes), and the full run's committed results."""

import json
import os
import subprocess
import sys
import time

import pytest

from bnn_transfer.demo.report import CURVE_PNG, SUMMARY, TABLE, format_table
from bnn_transfer.demo.tasks import CLASSES, CURVE_POINTS, TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "demo", "results")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_summary(summary, curve_points):
    """What every demo run must show, whatever the machine: the table's shape, sane numbers, the curve."""
    assert [(t["name"], t["train_per_class"]) for t in summary["tasks"]] == [(t.name, t.train_per_class)
                                                                            for t in TASKS]
    chance = 1 / CLASSES
    for t in summary["tasks"]:
        assert t["test_images"] >= 200, t  # one test image is at most half a point
        for r in ("scratch", "a", "b"):
            assert 0.0 <= t["rows"][r] <= t["rows_top5"][r] <= 1.0, t
        for r in ("a", "b"):
            assert t["rows"][r] > 1.5 * chance, t
    assert [p["train_per_class"] for p in summary["curve"]["points"]] == list(curve_points)
    indoor = summary["tasks"][2]
    at80 = next(p for p in summary["curve"]["points"] if p["train_per_class"] == indoor["train_per_class"])
    assert (at80["scratch"], at80["a"], at80["b"]) == (indoor["rows"]["scratch"], indoor["rows"]["a"],
                                                      indoor["rows"]["b"])
    assert summary["digits"]["float"]["top1"] > 2.5 * chance  # 10 digits


@pytest.mark.slow
def test_demo_runs_the_whole_flow_end_to_end_and_reruns_from_its_stages(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "demo", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    summary = json.loads((out / SUMMARY).read_text())
    # Quick sizes barely train the backbone: its ordering is noise, its margins over chance are the claims
    # that hold on any machine (README: what is reproducible); the full run's ordering is checked below.
    _check_summary(summary, CURVE_POINTS)
    # stdout is the result only: the table (progress and the stages' logs went to stderr)
    assert r.stdout == (out / TABLE).read_text() == format_table(summary) + "\n", r.stdout[-3000:]
    assert "| (b) fine-tuned, float last layer" in r.stdout
    deploy = summary["paths"]["deploy"]
    for f in ("manifest.json", "emulator.npz", "report/estimates.json", "report/README.md"):
        assert os.path.exists(os.path.join(deploy, f)), f
    for png in (os.path.join(summary["paths"]["pretrain"], "curves.png"), str(out / CURVE_PNG)):
        assert open(png, "rb").read(8) == PNG_MAGIC

    # A second run reuses every finished stage, and gives the same table.
    t0 = time.time()
    r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stderr.count("up to date") >= 3, r2.stderr[-3000:]  # pretraining, export, build
    scratch_logs = sorted((out / "logs").glob("scratch-*.log"))  # the stages run side by side log there
    assert len(scratch_logs) == 2 * len(summary["tasks"] + summary["curve"]["points"]) - 2, scratch_logs
    assert all("up to date" in p.read_text() for p in scratch_logs), scratch_logs
    assert time.time() - t0 < summary["seconds"]
    again = json.loads((out / SUMMARY).read_text())
    assert again["table"] == summary["table"] and again["curve"] == summary["curve"]


def test_demo_refuses_an_output_it_did_not_write_before_any_work(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / TABLE).write_text("my notes\n")
    r = subprocess.run([sys.executable, "-m", "demo", "--quick", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert "table.md: exists and was not written by this demo" in r.stderr and len(r.stderr.splitlines()) == 1
    assert (out / TABLE).read_text() == "my notes\n" and sorted(os.listdir(out)) == [TABLE]


def test_committed_full_demo_results_are_the_commands_output_and_show_the_papers_claim(golden):
    """demo/results/ is what `python -m demo --out runs/demo` wrote (copied, not retyped), and README.md quotes it."""
    summary = json.load(open(os.path.join(RESULTS, SUMMARY), encoding="utf-8"))
    with open(os.path.join(RESULTS, TABLE), encoding="utf-8") as f:
        table = f.read()
    assert table == format_table(summary) + "\n"
    _check_summary(summary, CURVE_POINTS)
    assert not summary["config"]["quick"]
    for t in summary["tasks"]:
        rows = t["rows"]
        if t["train_per_class"] <= 30:
            assert rows["b"] >= rows["scratch"] + 0.05, t
            assert rows["b"] >= rows["a"] - 0.01, t
        else:
            assert rows["b"] >= rows["scratch"], t
    # the frozen features also carry real scans (bench transfer/digits asks the same of this backbone)
    assert summary["digits"]["float"]["top1"] >= 0.92, summary["digits"]
    assert summary["seconds"] <= 600, summary["seconds"]
    with open(os.path.join(RESULTS, CURVE_PNG), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    golden.quote("demo_full", table)
