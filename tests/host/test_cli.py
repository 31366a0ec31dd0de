"""python -m host fit / eval / predict / bench end to end, and every bad input as one line."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from fake_pynq import FakeBoard, colour_network, make_bundle

from bnn_transfer.host.__main__ import main
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.cli import run_cli
from bnn_transfer.host.datasets import open_dataset
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.heads import Head, load_head, predict_topk, save_head
from bnn_transfer.host.preprocess import Preprocess, eval_transform
from bnn_transfer.host.report import save_confusion_png

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTH = ["--dataset", "synthetic-transfer", "--option", "n_train_per_class=30", "--option", "n_test_per_class=10"]
FIT_KEYS = {"command", "head", "variant", "backend", "dataset", "classes", "feature_width", "train_images", "skipped",
            "n_train", "n_val", "val_top1", "solver", "l2", "l2_chosen_by", "best_epoch", "epochs_run", "cached",
            "cache", "extract_seconds",
            "images_per_s", "train_seconds", "seconds", "peak_rss_mb"}
EVAL_KEYS = {"command", "head", "variant", "backend", "dataset", "classes", "top1", "top5", "images", "skipped",
             "cached", "cache", "images_per_s", "extract_seconds", "confusion", "seconds"}


@pytest.fixture(autouse=True)
def no_board_env(monkeypatch):
    """In-process commands read $BOARD and PYNQ's board files; a PYNQ machine running the tests must not change them."""
    monkeypatch.delenv("BOARD", raising=False)
    monkeypatch.setattr("bnn_transfer.host.boards.BOARD_FILES", ())



def host(*args, env=None):
    """``python -m host ARGS`` in a subprocess, without the caller's $BOARD."""
    e = {k: v for k, v in os.environ.items() if k != "BOARD"}
    e.update(env or {})
    # the timeout only guards against a hang: bench --quick takes ~20 s idle, minutes beside a loaded CI's jobs
    return subprocess.run([sys.executable, "-m", "host"] + [str(a) for a in args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=300)


def one_json_line(r):
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def one_error_line(rc, err, *fragments):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A colour bundle and a float head fitted on it through the CLI (shared: fitting is the slow part)."""
    d = tmp_path_factory.mktemp("cli")
    network, io, width = colour_network()
    bundle = make_bundle(d / "bundle", with_bitfile=False, network=network, io=io, feature_width=width)
    head = d / "heads" / "float.npz"
    r = host("fit", "--bundle", bundle, *SYNTH, "--head-type", "float", "--out", head, "--quiet")
    return {"dir": d, "bundle": str(bundle), "head": str(head), "fit": one_json_line(r), "fit_stderr": r.stderr,
            "width": width}


def test_help_on_every_command(capsys):
    for argv in ([], ["fit"], ["eval"], ["predict"], ["bench"]):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: python -m host")
        assert ("--bundle" in out) == bool(argv)
    with pytest.raises(BnnError, match=r"^python -m host: the following arguments are required: COMMAND "
                                       r"\(see python -m host --help\)$"):
        main([])  # no command: a usage error, one line (exit 2 behind run_cli)


def test_fit_writes_a_head_that_knows_its_bundle(trained):
    res = trained["fit"]
    assert set(res) == FIT_KEYS and res["command"] == "fit" and res["backend"] == "emulator"
    assert res["train_images"] == 300 and res["n_train"] + res["n_val"] == 300 and res["skipped"] == 0
    assert res["classes"] == 10 and res["feature_width"] == trained["width"] and not res["cached"]
    assert os.path.isfile(res["cache"]) and os.path.dirname(res["cache"]) == os.path.join(
        os.path.dirname(trained["head"]), "features-cache")
    assert res["images_per_s"] > 0 and res["peak_rss_mb"] > 0 and 0 < res["train_seconds"] < res["seconds"]
    assert trained["fit_stderr"] == ""  # --quiet: no bars, and nothing went wrong

    head = load_head(trained["head"])
    bundle = load_bundle(trained["bundle"])
    for key, value in bundle.head_meta().items():
        assert head.meta[key] == value
    assert head.meta["dataset"]["name"] == "synthetic-transfer" and head.meta["dataset"]["count"] == 300
    assert head.meta["bundle"]["digest"] == bundle.digest
    assert res["solver"] == "lbfgs" and res["l2_chosen_by"] == "held-out accuracy"
    assert head.meta["train"]["l2"]["value"] == res["l2"] and res["l2"] in head.meta["train"]["l2"]["grid"]
    assert head.classes == open_dataset("synthetic-transfer", "train").classes


def test_second_fit_reads_the_cache(trained):
    out = trained["dir"] / "heads" / "again.npz"
    res = one_json_line(host("fit", "--bundle", trained["bundle"], *SYNTH, "--out", out, "--quiet"))
    first = trained["fit"]
    assert res["cached"] and res["cache"] == first["cache"] and res["images_per_s"] is None
    assert res["extract_seconds"] < first["extract_seconds"]
    assert res["val_top1"] == first["val_top1"]  # same features, same seed: the same head
    assert np.array_equal(load_head(out).params["W"], load_head(trained["head"]).params["W"])


def test_eval_beats_chance_and_draws_the_confusion_matrix(trained):
    from PIL import Image

    r = host("eval", "--bundle", trained["bundle"], "--head", trained["head"], *SYNTH, "--quiet")
    res = one_json_line(r)
    assert set(res) == EVAL_KEYS and res["images"] == 100 and res["classes"] == 10 and not res["cached"]
    # chance is 0.1 top-1 / 0.5 top-5; colour alone gets this backbone to ~0.35 / ~0.85
    assert res["top1"] >= 0.2 and res["top5"] >= 0.6 and res["top5"] >= res["top1"]
    assert res["images_per_s"] > 0
    png = trained["head"][:-4] + ".confusion.png"
    assert res["confusion"] == png
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        # the labelled matplotlib figure, or the plain fallback where matplotlib is missing
        labelled = importlib.util.find_spec("matplotlib") is not None
        assert im.format == "PNG" and min(im.size) > (300 if labelled else 30)
    assert ("matplotlib is not installed" in r.stderr) != labelled

    again = one_json_line(host("eval", "--bundle", trained["bundle"], "--head", trained["head"], *SYNTH, "--quiet",
                               "--confusion", trained["dir"] / "cm.png"))
    assert again["cached"] and again["images_per_s"] is None and again["top1"] == res["top1"]
    assert os.path.isfile(str(trained["dir"] / "cm.png"))


def _write_test_images(folder, n):
    from PIL import Image

    ds = open_dataset("synthetic-transfer", "test", n_test_per_class=1)
    os.makedirs(str(folder), exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(str(folder), "img%d.png" % i)
        Image.fromarray(ds.load(i)).save(p)
        paths.append(p)
    return paths


def test_predict_prints_top5_per_image_and_flags_unreadable_ones(trained, image_tools):
    paths = _write_test_images(trained["dir"] / "images", 3)
    bad = str(image_tools.write_corrupt(trained["dir"] / "images" / "broken.jpg"))
    r = host("predict", "--bundle", trained["bundle"], "--head", trained["head"], paths[0], bad, paths[1], paths[2])
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: %s: cannot decode image" % bad)
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["image"] for row in rows] == paths and {row["backend"] for row in rows} == {"emulator"}

    # the same numbers as the library on the same pixels (PNG is lossless)
    head = load_head(trained["head"])
    bundle = load_bundle(trained["bundle"])
    from bnn_transfer.host.backends import make_backend
    from bnn_transfer.host.preprocess import decode_image

    pp = Preprocess.from_dict(bundle.preprocess)
    feats = make_backend("emulator", bundle).extract(np.stack([eval_transform(decode_image(p), pp) for p in paths]))
    idx, prob = predict_topk(head, feats, k=5)
    for row, i_row, p_row in zip(rows, idx, prob):
        assert [t["class"] for t in row["top"]] == [head.classes[i] for i in i_row]
        assert np.allclose([t["prob"] for t in row["top"]], p_row, atol=1e-6)
        assert all(a["prob"] >= b["prob"] for a, b in zip(row["top"], row["top"][1:])) and row["top"][0]["prob"] <= 1

    r = host("predict", "--bundle", trained["bundle"], "--head", trained["head"], "--table", "--top", "3", paths[0])
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == paths[0] + "  (emulator backend)" and len(lines) == 4
    assert lines[1].split()[:2] == ["1", head.classes[idx[0][0]]] and lines[1].endswith("%")


def test_bad_bundles_and_heads_are_one_line_errors(trained, tmp_path):
    bundle, head = trained["bundle"], trained["head"]
    # a head of another feature width
    other = make_bundle(tmp_path / "other", with_bitfile=False)
    r = host("predict", "--bundle", other, "--head", head, "x.png")
    one_error_line(r.returncode, r.stderr, head, "head was trained for %d features" % trained["width"], "produces 12")
    # a bundle for another board, by flag and by $BOARD as PYNQ sets it
    r = host("eval", "--bundle", bundle, "--head", head, *SYNTH, "--board", "ultra96")
    one_error_line(r.returncode, r.stderr, "bundle was built for board 'pynq-z2', not 'ultra96'")
    r = host("eval", "--bundle", bundle, "--head", head, *SYNTH, env={"BOARD": "KV260"})
    one_error_line(r.returncode, r.stderr, "not 'KV260'")
    # a tampered bundle
    tampered = str(tmp_path / "tampered")
    shutil.copytree(bundle, tampered)
    with open(os.path.join(tampered, "emulator.npz"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = host("fit", "--bundle", tampered, *SYNTH, "--out", tmp_path / "h.npz")
    one_error_line(r.returncode, r.stderr, "emulator.npz: sha256 does not match")
    assert not os.path.exists(str(tmp_path / "h.npz"))


@pytest.fixture
def tiny(tmp_path):
    """The small bundle of fake_pynq (with a bitfile, for the fake board) and a head that fits it."""
    path = make_bundle(tmp_path / "bundle")
    bundle = load_bundle(path)
    classes = open_dataset("synthetic-transfer", "test", num_classes=3).classes
    rng = np.random.default_rng(0)
    head = Head("float", classes, bundle.feature_width,
                {"W": rng.standard_normal((bundle.feature_width, 3)), "b": np.zeros(3)}, bundle.head_meta())
    save_head(str(tmp_path / "head.npz"), head)
    return {"path": path, "bundle": bundle, "head": str(tmp_path / "head.npz"), "dir": tmp_path}


def _cli(capsys, *argv):
    rc = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


TINY_DATA = ["--dataset", "synthetic-transfer", "--option", "num_classes=3", "--option", "n_test_per_class=4",
             "--quiet"]


def test_hung_accelerator_ends_with_one_line_not_a_hang(tiny, monkeypatch, capsys):
    board = FakeBoard(tiny["bundle"], hang=True)
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    rc, out, err = _cli(capsys, "eval", "--bundle", tiny["path"], "--head", tiny["head"], *TINY_DATA, "--no-cache",
                        "--timeout", "0.2")
    one_error_line(rc, err, "accelerator did not finish within 0.2 s")
    assert out == "" and board.freed  # the DMA buffers were given back
    paths = _write_test_images(tiny["dir"] / "images", 1)
    # the same (still hung) board: the next run is refused at once instead of mixing up two batches
    rc, out, err = _cli(capsys, "predict", "--bundle", tiny["path"], "--head", tiny["head"], "--timeout", "0.2", *paths)
    one_error_line(rc, err, "the output DMA 'odma0' is busy")


def test_pynq_is_the_default_backend_where_it_is_available(tiny, monkeypatch, capsys):
    board = FakeBoard(tiny["bundle"])
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    rc, out, err = _cli(capsys, "eval", "--bundle", tiny["path"], "--head", tiny["head"], *TINY_DATA, "--no-cache")
    assert rc == 0, err
    res = json.loads(out)
    assert res["backend"] == "pynq" and res["images"] == 12 and board.runs and board.errors == []


def test_on_a_board_a_missing_pynq_or_bitfile_is_an_error_not_the_emulator(tiny, monkeypatch, capsys):
    """Off a board the emulator is the default; on one (here: $BOARD as PYNQ sets it) the FPGA is, or an error."""
    monkeypatch.setitem(sys.modules, "pynq", None)  # a shell outside PYNQ's Python
    argv = ["eval", "--bundle", tiny["path"], "--head", tiny["head"], *TINY_DATA, "--no-cache"]
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0 and json.loads(out)["backend"] == "emulator", err
    monkeypatch.setenv("BOARD", "Pynq-Z2")
    rc, out, err = _cli(capsys, *argv)
    one_error_line(rc, err, "cannot import the pynq package", "sudo -i", "--backend emulator")
    assert out == ""
    rc, out, err = _cli(capsys, *argv, "--backend", "emulator")  # asked for: it runs, and says so
    assert rc == 0 and json.loads(out)["backend"] == "emulator", err
    # with pynq there but no bitstream in the bundle
    monkeypatch.setitem(sys.modules, "pynq", FakeBoard(tiny["bundle"]).module())
    no_bit = make_bundle(tiny["dir"] / "no-bit", with_bitfile=False)
    paths = _write_test_images(tiny["dir"] / "images", 1)
    rc, out, err = _cli(capsys, "predict", "--bundle", no_bit, "--head", tiny["head"], *paths)
    one_error_line(rc, err, "bundle has no bitfile", "--backend emulator")
    # the board is read from the device tree where a plain sudo dropped $BOARD
    monkeypatch.delenv("BOARD")
    chosen = tiny["dir"] / "pynq_board"
    chosen.write_bytes(b"ZCU104\0")
    monkeypatch.setattr("bnn_transfer.host.boards.BOARD_FILES", (str(chosen),))
    rc, out, err = _cli(capsys, *argv)
    one_error_line(rc, err, "bundle was built for board 'pynq-z2', not 'ZCU104'")


@pytest.mark.parametrize("argv, fragments", [
    (["eval", "--option", "colour=red"], ["unknown option(s) colour"]),
    (["eval", "--option", "n_test_per_class"], ["--option 'n_test_per_class': expected KEY=VALUE"]),
    (["eval", "--head", "{dir}/missing.npz"], ["missing.npz: head file not found"]),
    (["eval", "--option", "num_classes=4"], ["head knows 3 classes but the synthetic-transfer test split has 4"]),
    (["eval", "--extract-batch-size", "0"], ["--extract-batch-size: must be a positive integer"]),
    (["fit", "--out", "{dir}"], ["is a directory; --out takes the head file to write"]),
    (["fit", "--solver-option", "epochs=0"], ["epochs", "must be positive"]),
    (["fit", "--solver-option", "val_fraction=1"], ["val_fraction must be in [0, 1), got 1"]),
    (["fit", "--solver-option", "momentum=0.9"], ["--solver-option momentum: unknown (valid: solver, weight_decay"]),
    (["fit", "--solver-option", "epochs=ten"], ["--solver-option epochs=ten: expected int"]),
    (["fit", "--solver-option", "refit=maybe"], ["--solver-option refit=maybe: expected bool or none"]),
    (["fit", "--solver-option", "solver=lbfgs", "--head-type", "binary"], ["the binary head trains with adam"]),
    (["fit", "--lr", "0.1"], ["--lr was renamed --solver-option lr=..."]),
    (["eval", "--bundle", "{dir}/nowhere"], ["nowhere: bundle directory not found"]),
    (["bench", "--batch-sizes", "1,x"], ["--batch-sizes: expected positive integers"]),
    (["bench", "--backends", "fpga"], ["--backends: unknown fpga"]),
])
def test_bad_arguments_are_one_line_errors(tiny, capsys, argv, fragments):
    cmd, extra = argv[0], [a.format(dir=tiny["dir"]) for a in argv[1:]]
    base = {"fit": {"--out": str(tiny["dir"] / "h.npz")}, "eval": {"--head": tiny["head"]}, "bench": {}}[cmd]
    base["--bundle"] = tiny["path"]
    args = [cmd]
    for flag, value in base.items():
        if flag not in extra:
            args += [flag, value]
    if cmd != "bench":
        args += ["--dataset", "synthetic-transfer", "--option", "num_classes=3", "--quiet", "--no-cache"]
    rc, out, err = _cli(capsys, *(args + extra))
    one_error_line(rc, err, *[f.format(dir=tiny["dir"]) for f in fragments])
    assert out == ""


def test_fit_skips_unreadable_images_with_one_warning(tiny, capsys, image_tools):
    root = tiny["dir"] / "data"
    for k, c in enumerate(["cat", "dog"]):
        for j in range(4):
            image_tools.write_image(root / c / ("%d.png" % j), seed=k)
    bad = str(image_tools.write_corrupt(root / "dog" / "2b.jpg"))
    rc, out, err = _cli(capsys, "fit", "--bundle", tiny["path"], "--dataset", "folder", "--data-dir", root,
                        "--option", "test_fraction=0", "--out", tiny["dir"] / "h.npz", "--quiet",
                        "--solver-option", "epochs=3")
    assert rc == 0, err
    skipped, fallback = err.strip().splitlines()
    assert skipped.startswith("warning: skipped 1 unreadable images of 9 (first: %s: cannot decode image" % bad)
    # 8 images leave no held-out split worth choosing an L2 on: the fallback is said and recorded
    assert fallback.startswith("warning: %s: held-out split too small to choose L2 from" % (tiny["dir"] / "h.npz"))
    res = json.loads(out)
    assert res["train_images"] == 8 and res["skipped"] == 1 and load_head(res["head"]).classes == ["cat", "dog"]
    assert res["l2_chosen_by"] == "fallback" and load_head(res["head"]).meta["train"]["l2"]["value"] == res["l2"]


def test_bench_measures_backends_packing_and_head_training(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynq", FakeBoard(tiny["bundle"]).module())
    rc, out, err = _cli(capsys, "bench", "--bundle", tiny["path"], "--quick", "--batch-sizes", "1,4", "--seconds",
                        "0.02")
    assert rc == 0, err
    res = json.loads(out)
    assert res["available_backends"] == ["pynq", "emulator"]
    for name in ("pynq", "emulator"):
        for bs in ("1", "4"):
            entry = res["backends"][name][bs]
            assert entry["images_per_s"] > 0 and entry["batches"] >= 1
    assert res["packing"]["input"]["datatype"] == "UINT8" and res["packing"]["input"]["bytes_per_image"] == 192
    assert res["packing"]["output"]["unpack_images_per_s"] > 0
    assert res["packing"]["feature_cache"]["bytes_per_image"] == 2
    heads = res["head_training"]
    assert heads["feature_width"] == 12 and heads["float"]["seconds"] > 0 and heads["float"]["solver"] == "lbfgs"
    assert heads["float"]["passes"] >= 2
    assert "bench: backend pynq" in err


def test_bench_in_a_subprocess_reports_a_broken_backend_without_failing(tiny):
    r = host("bench", "--bundle", tiny["path"], "--quick", "--batch-sizes", "2", "--seconds", "0.02",
             "--backends", "emulator,pynq")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["backends"]["emulator"]["2"]["images_per_s"] > 0
    assert "cannot import the pynq package" in res["backends"]["pynq"]["error"]
    # the process's peak after each backend's batches, before the live loop and head training
    rss = res["streaming_peak_rss_mb"]
    assert sorted(rss) == ["emulator", "pynq"] and 20 < rss["emulator"] <= rss["pynq"] <= res["peak_rss_mb"]


def test_confusion_png_without_matplotlib_is_a_plain_heat_map(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    cm = np.array([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    path = str(tmp_path / "cm.png")
    assert save_confusion_png(path, cm, ["a", "b", "c"]) == "plain"
    assert "matplotlib is not installed" in capsys.readouterr().err
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"))
    cell = px.shape[0] // 3
    assert px.shape == (3 * cell, 3 * cell, 3) and cell > 1
    # darker where the row's rate is higher: b->b (1.0) darker than a->a (5/6), empty cells white
    assert px[cell + 1, cell + 1].sum() < px[1, 1].sum() < px[1, 2 * cell + 1].sum() == 3 * 255
