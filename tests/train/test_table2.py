"""python -m train table2: every row of the paper's Table 2, end to end on the synthetic stand-ins."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.train.__main__ import build_parser
from bnn_transfer.train.__main__ import main as train_main
from bnn_transfer.train.fit import FitConfig, run
from bnn_transfer.train.table2 import Table2Config, check_layouts, load_imagenet_runs, plan_jobs, run_table2
from bnn_transfer.train.table2_paper import PAPER_IMAGENET, PAPER_TABLE2, ROWS, TARGETS
from bnn_transfer.train.table2_report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A few images per class and one epoch per row (two for the fine-tuned rows, so one can be interrupted).
SMALL = ["--synthetic", "--synthetic-scale", "0.05", "--pretrain-epochs", "1", "--scratch-epochs", "1",
         "--finetune-epochs", "2", "--workers", "0", "--batch-size", "16"]
ROW_IDS = ["imagenet-fp", "imagenet-binary"] + ["%s-%s" % (t.key, r.key) for t in TARGETS for r in ROWS]
PAPER_NUMBERS = ["%.1f" % v for cols in PAPER_TABLE2.values() for pair in cols.values() for v in pair]


class Interrupt(Exception):
    pass


def _config(out, *extra):
    return Table2Config.from_args(build_parser().parse_args(["table2", *SMALL, "--out", str(out), *extra]))


def _table_lines(md):
    """The lines of Table 2 itself (not the pretraining or runs tables)."""
    return [line for line in md.splitlines() if any("| %s |" % r.label in line for r in ROWS)]


def _checkpoint_mtimes(out):
    return {i: os.stat(out / "runs" / i / "checkpoint.pt").st_mtime_ns for i in ROW_IDS}


@pytest.mark.slow
def test_synthetic_table_runs_end_to_end_resumes_and_skips(tmp_path, capsys):
    out = tmp_path / "report"

    def stop_mid_row(row_id, epoch, metrics):
        if row_id == "birds-binary-a" and epoch == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run_table2(_config(out), on_epoch_end=stop_mid_row, progress=False)
    partial = json.loads((out / "table2.json").read_text())
    status = {r["id"]: r["status"] for r in partial["rows"]}
    assert status["flowers-binary-b"] == "done" and status["birds-binary-a"] == "interrupted"
    assert status["indoor-binary-b"] == "not run" and "—" in (out / "table2.md").read_text()

    # The CLI picks up where the interrupted command stopped.
    capsys.readouterr()
    assert train_main(["table2", *SMALL, "--out", str(out)]) == 0
    log = capsys.readouterr().err
    assert "resuming birds-binary-a" in log and "running indoor-binary-b" in log
    assert "running flowers-fp-scratch" not in log
    metrics = (out / "runs" / "birds-binary-a" / "metrics.jsonl").read_text().splitlines()
    resumed = [json.loads(line) for line in metrics]
    assert [r["epoch"] for r in resumed] == [1, 2]

    md = (out / "table2.md").read_text()
    assert "synthetic stand-ins" in md.lower()
    for r in ROWS:
        assert "| %s |" % r.label in md
    for t in TARGETS:
        assert "%s top-1 | %s top-5" % (t.title, t.title) in md
    for number in PAPER_NUMBERS + ["%.1f" % v for pair in PAPER_IMAGENET.values() for v in pair]:
        assert number in md
    table_lines = _table_lines(md)
    assert len(table_lines) == len(ROWS) and all("—" not in line for line in table_lines)

    report = json.loads((out / "table2.json").read_text())
    assert [r["id"] for r in report["pretrain"]] + [r["id"] for r in report["rows"]] == ROW_IDS
    for r in report["pretrain"] + report["rows"]:
        assert r["status"] == "done"
        for k in ("top1", "top5", "paper_top1", "paper_top5"):
            assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0, (r["id"], k)
        assert r["top1"] <= r["top5"]
    assert report["paper"]["table2"]["binary-b"]["birds"] == {"top1": 0.367, "top5": 0.634}
    png = (out / "table2.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    # A second invocation trains nothing.
    before = _checkpoint_mtimes(out)
    t0 = time.monotonic()
    assert train_main(["table2", *SMALL, "--out", str(out)]) == 0
    elapsed = time.monotonic() - t0
    result, log = capsys.readouterr()
    assert _checkpoint_mtimes(out) == before
    assert "up to date" not in result and all(line.startswith("|") for line in result.strip().splitlines())
    assert log.count("is up to date") == len(ROW_IDS) and "17 done, 0 to resume, 0 to run" in log
    assert elapsed < 30, elapsed

    # Other parameters for an existing row are refused, naming the row's directory, before anything runs.
    with pytest.raises(BnnError, match=r"runs/imagenet-fp: holds a fit run with other parameters \(epochs 1 -> 2\)"):
        run_table2(_config(out, "--pretrain-epochs", "2"), progress=False)
    assert _checkpoint_mtimes(out) == before

    # The pretrained runs can seed another table; a run of another preset cannot.
    runs = [str(out / "runs" / "imagenet-fp"), str(out / "runs" / "imagenet-binary")]
    cfg = _config(tmp_path / "other", "--imagenet-run", runs[0], "--imagenet-run", runs[1]).resolved()
    assert load_imagenet_runs(cfg) == {"fp": runs[0], "binary": runs[1]}
    with pytest.raises(BnnError, match="is a 'tiny' run, this table uses preset 'z2'"):
        load_imagenet_runs(_config(tmp_path / "z2", "--preset", "z2", "--imagenet-run", runs[0]).resolved())


def test_imagenet_runs_replace_pretraining_and_unrun_rows_show_dashes(tmp_path):
    cfg = _config(tmp_path / "report").resolved()
    given = {"fp": str(tmp_path / "fp-run"), "binary": str(tmp_path / "bin-run")}
    jobs = plan_jobs(cfg, given)
    assert [j.id for j in jobs] == ROW_IDS[2:]
    for j in jobs:
        r = j.row
        assert (j.mode == "finetune") == (r.pretrained is not None)
        if r.pretrained:
            assert j.fit.init_from == given[r.pretrained] and j.fit.cut == "fc3"
        assert (j.fit.precision, j.fit.head) == (r.pretrained or r.precision, r.head)
    # Different stand-ins for the three targets: they must not collapse into one task.
    assert len({json.dumps(j.fit.dataset_options, sort_keys=True) for j in jobs}) == len(TARGETS)

    report = write_report(cfg, jobs, given, plot=False)
    md = (tmp_path / "report" / "table2.md").read_text()
    cells = re.findall(r"\| ([—0-9.]+) / ([0-9.]+) ", "\n".join(_table_lines(md)))
    assert len(cells) == len(ROWS) * 2 * len(TARGETS) and all(ours == "—" for ours, _ in cells)
    assert sorted(paper for _, paper in cells) == sorted(PAPER_NUMBERS)
    assert {r["status"] for r in report["rows"]} == {"not run"}
    assert all(r["top1"] is None for r in report["rows"])


def test_missing_dataset_dir_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "no-flowers"
    r = subprocess.run(
        [sys.executable, "-m", "train", "table2", "--imagenet", str(tmp_path), "--flowers", str(missing),
         "--birds", str(tmp_path), "--indoor", str(tmp_path), "--out", str(tmp_path / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: %s: not found" % missing)
    assert "--flowers" in err
    assert not (tmp_path / "report").exists()


def test_real_layouts_are_wired_and_checked_before_anything_trains(tmp_path, fake_imagenet, fake_flowers,
                                                                  fake_cub, fake_indoor):
    dirs = {"imagenet": fake_imagenet[0], "flowers": fake_flowers[0], "birds": fake_cub[0], "indoor": fake_indoor[0]}
    argv = ["table2", "--preset", "tiny", "--out", str(tmp_path / "report")]
    for key, d in dirs.items():
        argv += ["--%s" % key, str(d)]
    cfg = Table2Config.from_args(build_parser().parse_args(argv))
    jobs = plan_jobs(cfg.resolved(), {})
    expected = {"imagenet": "imagenet", "flowers": "flowers102", "birds": "cub200", "indoor": "indoor67"}
    for j in jobs:
        key = "imagenet" if j.target is None else j.target.key
        assert (j.fit.dataset, j.fit.data_dir, j.fit.dataset_options) == (expected[key], str(dirs[key]), {})
        assert j.fit.preset == "tiny"
    check_layouts(jobs)

    os.remove(fake_flowers[0] / "setid.mat")
    with pytest.raises(BnnError, match=r"flowers/setid.mat: not found"):
        run_table2(cfg, progress=False)
    assert not (tmp_path / "report").exists()


def test_imagenet_run_must_be_a_finished_pretraining(tmp_path):
    opts = {"num_classes": 3, "n_train_per_class": 4, "n_test_per_class": 1, "image_size": 32}
    pre = FitConfig(out=str(tmp_path / "pre"), dataset="synthetic", dataset_options=opts, epochs=2, batch_size=8,
                    workers=0)

    def stop(epoch, row):
        raise Interrupt()

    with pytest.raises(Interrupt):
        run(pre, on_epoch_end=stop, progress=False)
    with pytest.raises(BnnError, match="pre: the run has not finished"):
        load_imagenet_runs(_config(tmp_path / "r", "--imagenet-run", str(tmp_path / "pre")).resolved())
