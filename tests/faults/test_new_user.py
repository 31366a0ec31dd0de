"""A second round of bad input, tried as a new user would: each once ended in a traceback or a memory blow-up."""

import os

import pytest

from host.cli import run_cli
from host.errors import BnnError
from host.manifest import load_manifest, write_bytes_atomic
from tests.host.fake_pynq import make_bundle


def host(capsys, *args):
    from host.__main__ import main

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
    from build_fpga.build import _read_folding

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
