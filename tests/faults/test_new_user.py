"""A second round of bad input, tried as a new user would: each once ended in a traceback or a memory blow-up."""

import os

import pytest

from bnn_transfer.host.atomic import write_bytes_atomic
from bnn_transfer.host.cli import run_cli
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import load_manifest
from tests.host.fake_pynq import make_bundle


def host(capsys, *args):
    from bnn_transfer.host.__main__ import main

    capsys.readouterr()
    rc = run_cli(main, [str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    return rc, lines[-1] if lines else ""


def test_deeply_nested_manifest_is_one_line(tmp_path):
    (tmp_path / "export.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BnnError, match=r"export\.json: cannot read manifest \(nested too deeply\)"):
        load_manifest(str(tmp_path), "export.json")


def test_folding_file_that_never_ends_is_refused_after_a_bounded_read():
    pytest.importorskip("finn", reason="build_fpga needs finn-plus")
    from bnn_transfer.build_fpga.build import _read_folding

    with pytest.raises(BnnError, match=r"/dev/zero: not a FINN folding config \(larger than 64 MB\)"):
        _read_folding("/dev/zero")


def test_unwritable_output_names_the_output_not_a_temporary_name():
    with pytest.raises(OSError) as e:
        write_bytes_atomic("/proc/x.png", b"png")
    assert e.value.filename == "/proc/x.png"


def test_batch_sizes_that_cannot_fit_a_board_and_a_negative_seed_are_one_line(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle")
    rc, line = host(capsys, "bench", "--bundle", bundle, "--batch-sizes", "1,100000000", "--quick")
    assert rc == 2 and line == ("error: --batch-sizes: 100000000 images of 8x8x3 take 18310 MB, over the 256 MB one "
                                "batch may use (at most 1398101)")
    rc, line = host(capsys, "fit", "--bundle", bundle, "--dataset", "synthetic-transfer", "--out", tmp_path / "h.npz",
                    "--seed", "-1")
    assert rc == 2 and line == "error: --seed: must be 0 or more, got -1"
    assert sorted(os.listdir(str(tmp_path))) == ["bundle"]


def test_unknown_or_absent_torch_device_is_one_line(tmp_path, capsys):
    import torch

    from bnn_transfer.train.__main__ import main

    small = ["--option", "n_train_per_class=2", "--option", "n_test_per_class=1", "--option", "num_classes=3"]
    for device, what in [("tpu", "not a torch device")] + [("cuda", "CUDA is not available")] * (
            not torch.cuda.is_available()):
        capsys.readouterr()
        rc = run_cli(main, ["fit", "--out", str(tmp_path / "r"), "--device", device, *small])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and line.startswith("error: --device %r: %s" % (device, what)), line
    assert os.listdir(str(tmp_path)) == []


def test_predict_table_of_a_file_name_that_is_not_utf8(tmp_path, capsys):
    import subprocess
    import sys

    from tests.conftest import write_image

    bundle = make_bundle(tmp_path / "bundle")
    head = tmp_path / "h.npz"
    assert host(capsys, "fit", "--bundle", bundle, "--dataset", "synthetic-transfer", "--option",
                "n_train_per_class=6", "--out", head, "--no-cache", "--quiet")[0] == 0
    image = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.png"))  # latin-1 name
    write_image(image, size=(8, 8))
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # a strict UTF-8 terminal
    env.pop("BOARD", None)
    r = subprocess.run([sys.executable, "-m", "host", "predict", "--bundle", bundle, "--head", str(head), "--table",
                        image], capture_output=True, env=env, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8").splitlines()[0].endswith("caf\ufffd.png  (emulator backend)")


def test_resume_with_a_crafted_metrics_file_or_run_manifest_is_one_line(tmp_path, capsys):
    from bnn_transfer.train.__main__ import main

    small = ["--option", "n_train_per_class=2", "--option", "n_test_per_class=1", "--option", "num_classes=3",
             "--workers", "0", "--epochs", "1"]
    out = tmp_path / "r"
    assert run_cli(main, ["fit", "--out", str(out), *small]) == 0
    (out / "run.json").write_text("[1, 2]")  # not an object: never "up to date"
    (out / "metrics.jsonl").write_text('{"no_epoch": 1}\n')
    capsys.readouterr()
    rc = run_cli(main, ["fit", "--out", str(out), "--resume", *small[:-1], "2"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and line == ("error: %s: not a metrics file of this flow (a JSON object with an 'epoch' per line)"
                                % (out / "metrics.jsonl"))
