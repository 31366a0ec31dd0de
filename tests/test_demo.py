"""The README's main job, end to end: python -m demo (quick sizes)."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_the_whole_flow_and_transfer_beats_chance(tmp_path, golden):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "demo", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    table = {row["row"]: row for row in summary["table"]}
    assert set(table) == {"binary, trained from scratch", "(a) fine-tuned, binary last layer",
                          "(b) fine-tuned, float last layer", "real images: digits, (b) float layer"}
    assert table["real images: digits, (b) float layer"]["top1"] > 2.5 * (1 / 10), summary  # 10 digits
    chance = 1 / 10  # synthetic-transfer has 10 classes
    float_head = table["(b) fine-tuned, float last layer"]
    assert float_head["top1"] > 2.5 * chance, summary
    assert table["(a) fine-tuned, binary last layer"]["top1"] > 1.5 * chance, summary
    for row in summary["table"]:
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
    # stdout is the result only: the table (progress and the stages' logs went to stderr)
    assert r.stdout == (out / "table.md").read_text(), r.stdout[-3000:]
    assert "| (b) fine-tuned, float last layer" in r.stdout
    # Deterministic for a seed (README.md shows this golden table): a change is a change of behaviour.
    golden.check("demo_quick.md", r.stdout)
    deploy = summary["paths"]["deploy"]
    for f in ("manifest.json", "emulator.npz", "report/estimates.json", "report/README.md"):
        assert os.path.exists(os.path.join(deploy, f)), f
    for png in (os.path.join(summary["paths"]["pretrain"], "curves.png"),
                summary["paths"]["head_float"].replace(".npz", ".confusion.png")):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # A second run reuses every finished stage.
    t0 = time.time()
    r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stderr.count("up to date") >= 4, r2.stderr[-3000:]
    assert time.time() - t0 < summary["seconds"]
    again = json.loads((out / "summary.json").read_text())
    assert again["table"] == summary["table"]
