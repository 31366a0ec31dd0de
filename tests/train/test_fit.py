import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bnn_transfer.host.errors import BnnError
from bnn_transfer.train.checkpoint import load_checkpoint
from bnn_transfer.train.fit import FitConfig, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"n_train_per_class": 12, "n_test_per_class": 4, "num_classes": 6}


def _cfg(out, **kw):
    base = dict(out=str(out), preset="tiny", dataset="synthetic", dataset_options=dict(SMALL), epochs=2,
                batch_size=16, workers=0, seed=3)
    base.update(kw)
    return FitConfig(**base)


def cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_reaches_the_same_state(tmp_path):
    run(_cfg(tmp_path / "straight"), progress=False)

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run(_cfg(tmp_path / "killed"), on_epoch_end=stop_after_first, progress=False)
    assert load_checkpoint(tmp_path / "killed")["epoch"] == 1
    run(_cfg(tmp_path / "killed", resume=True), progress=False)

    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "killed")
    assert b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    rows = [json.loads(line) for line in open(tmp_path / "killed" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_finished_run_is_skipped_and_different_run_in_same_dir_refused(tmp_path, capsys):
    cfg = _cfg(tmp_path / "r", epochs=1)
    first = run(cfg, progress=False)
    again = run(_cfg(tmp_path / "r", epochs=1), progress=False)
    out, err = capsys.readouterr()
    assert again == first and "up to date" in err and out == ""  # progress on stderr, stdout for results
    manifest = (tmp_path / "r" / "run.json").read_bytes()
    # --resume on a finished run (the demo always passes it) skips too, and leaves the run as it was
    assert run(_cfg(tmp_path / "r", epochs=1, resume=True), progress=False) == first
    assert (tmp_path / "r" / "run.json").read_bytes() == manifest
    with pytest.raises(BnnError, match="a run already exists here"):
        run(_cfg(tmp_path / "r", epochs=2), progress=False)


def test_resume_refuses_other_parameters_and_fp_refuses_binary_head(tmp_path):
    def stop(epoch, row):
        raise Interrupt()

    with pytest.raises(Interrupt):
        run(_cfg(tmp_path / "r"), on_epoch_end=stop, progress=False)
    with pytest.raises(BnnError, match=r"cannot resume with other parameters \(lr None -> 0.1\)"):
        run(_cfg(tmp_path / "r", resume=True, lr=0.1), progress=False)
    with pytest.raises(BnnError, match="--head-type binary needs a binary network"):
        run(_cfg(tmp_path / "fp", precision="fp", head="binary"), progress=False)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / ("%d.jpg" % i))
    good = (tmp_path / "data" / "train" / "a" / "0.jpg").read_bytes()
    (tmp_path / "data" / "train" / "a" / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "data" / "train" / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    row = run(_cfg(tmp_path / "r", dataset="folder", data_dir=str(tmp_path / "data"), dataset_options={},
                   epochs=1, batch_size=4), progress=False)
    assert row["skipped_images"] == 2


def test_cli_errors_are_one_line(tmp_path):
    r = cli("train", "fit", "--dataset", "flowers102", "--data-dir", str(tmp_path / "nope"),
            "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "nope" in r.stderr

    run(_cfg(tmp_path / "tiny", epochs=1), progress=False)
    r = cli("train", "fit", "--preset", "z2", "--resume", "--out", str(tmp_path / "tiny"), "--epochs", "1",
            "--option", "n_train_per_class=2")
    assert r.returncode == 2 and "preset 'tiny', expected 'z2'" in r.stderr

    (tmp_path / "trunc").mkdir()
    data = (tmp_path / "tiny" / "checkpoint.pt").read_bytes()
    (tmp_path / "trunc" / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    r = cli("train", "eval", "--run", str(tmp_path / "trunc"), "--dataset", "synthetic")
    assert r.returncode == 2 and "not a readable checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_distributed_data_parallel_on_cpu(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed next to the interpreter")
    out = tmp_path / "ddp"
    # --standalone: a free rendezvous port, not a fixed one another run (or a leftover) may hold
    r = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "train", "fit", "--preset", "tiny",
         "--option", "n_train_per_class=8", "--option", "n_test_per_class=4", "--option", "num_classes=4",
         "--epochs", "1", "--batch-size", "8", "--workers", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    state = load_checkpoint(out)
    assert state["epoch"] == 1 and state["model_config"]["num_classes"] == 4
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 1  # rank 0 alone writes


def test_held_out_images_choose_the_epoch_and_the_test_split_is_scored_once(tmp_path):
    row = run(_cfg(tmp_path / "r", epochs=3, val_fraction=0.25), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [("val_top1" in r, "test_top1" in r) for r in rows] == [(True, False), (True, False), (True, True)]
    assert 1 <= row["best_epoch"] <= 3 and 0.0 <= row["best_val_top1"] <= 1.0
    assert row["test_top1"] == rows[-1]["test_top1"]
    # A quarter of each class of 12 is held out: 9 x 6 = 54 images train, in batches of 16 (the last dropped).
    ckpt = load_checkpoint(str(tmp_path / "r"))
    assert ckpt["fit_config"]["val_fraction"] == 0.25
    with pytest.raises(BnnError, match=r"--val-fraction 1.0: must be in \[0, 1\)"):
        run(_cfg(tmp_path / "bad", val_fraction=1.0), progress=False)


def test_best_epoch_smooths_the_held_out_score_and_prefers_longer_training():
    from bnn_transfer.train.fit import best_epoch

    def rows(scores):
        return [{"epoch": e + 1, "val_top1": v, "val_loss": 1.0} for e, v in enumerate(scores)]

    # One lucky epoch (0.9 at epoch 2) loses to a consistently good stretch, whose tie goes to the later epoch.
    assert best_epoch(rows([0.2, 0.9, 0.2, 0.6, 0.7, 0.7, 0.7, 0.7]))["best_epoch"] == 8
    assert best_epoch(rows([0.2, 0.9, 0.9, 0.9, 0.2, 0.2, 0.1, 0.1]))["best_epoch"] == 2  # then it overfits
    # A flat score: the last epoch.
    assert best_epoch(rows([0.5] * 6))["best_epoch"] == 6
