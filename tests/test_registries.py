"""The extension points (issue 26): a backend, a dataset and a board are each added through their
registry alone, with nothing else in the project naming them, and then run through the commands."""

import json
import os
import sys

import numpy as np
import pytest

from bnn_transfer.host import boards
from bnn_transfer.host.backends import BACKENDS, Backend, BackendOption, BackendSpec, make_backend, register_backend
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.datasets import DATASETS, DatasetSpec, register_dataset
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.imagedataset import ImageDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "host"))
from fake_pynq import colour_network, make_bundle  # noqa: E402


class InvertedEmulator(Backend):
    """The emulator's features with every bit flipped: a backend that is not one of ours, with an option."""

    name = "inverted"
    default_batch_size = 16

    def __init__(self, bundle, flip=True):
        super().__init__(bundle)
        self.flip = flip
        self._emulator = make_backend("emulator", bundle)

    def _run(self, images):
        feats = self._emulator.extract(images)
        return -feats if self.flip else feats


class Stripes(ImageDataset):
    """Two classes of generated images, horizontal or vertical stripes of a given period."""

    def __init__(self, split, period=4):
        n = 20 if split == "train" else 10
        labels = np.arange(n) % 2
        super().__init__("stripes", split, None, ["horizontal", "vertical"], None, labels, None,
                         {"period": period})
        self.period = period

    def load(self, i):
        rows = (np.arange(32) // self.period) % 2 * 255
        img = np.repeat(np.repeat(rows[:, None], 32, 1)[..., None], 3, 2).astype(np.uint8)
        return img if self.labels[i] == 0 else img.transpose(1, 0, 2).copy()

    def source(self, i):
        return "stripes:%s:%d" % (self.split, i)


@pytest.fixture
def restored():
    """Every registry as it was before the test (they are module-level tables that other modules hold)."""
    saved = [(table, dict(table)) for table in (BACKENDS, DATASETS, boards.BOARDS)]
    yield
    for table, content in saved:
        table.clear()
        table.update(content)


@pytest.fixture
def registered(restored, monkeypatch):
    """The dummy backend and dataset in the registries, for this test only."""
    register_backend(BackendSpec("inverted", InvertedEmulator, "flipped emulator bits", lambda bundle: True,
                                 options=(BackendOption("--keep-bits", "do not flip the bits",
                                                        lambda v: {"flip": not v}, type=int, metavar="0|1"),)))
    register_dataset(DatasetSpec("stripes", lambda split, data_dir, **o: Stripes(split, **o), ("period",),
                                 on_disk=False))
    monkeypatch.delenv("BOARD", raising=False)
    monkeypatch.setattr("bnn_transfer.host.boards.BOARD_FILES", ())


def _host(capsys, *argv):
    from bnn_transfer.host.__main__ import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_backend_and_a_dataset_added_through_their_registries_run_through_host_fit_and_eval(
        registered, tmp_path, capsys):
    from bnn_transfer.host.__main__ import build_parser

    network, io, width = colour_network()
    bundle = make_bundle(tmp_path / "bundle", with_bitfile=False, network=network, io=io, feature_width=width)
    help_text = build_parser().format_help() + build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert "inverted (flipped emulator bits)" in help_text and "--keep-bits" in help_text and "stripes" in help_text

    head = tmp_path / "head.npz"
    common = ["--bundle", bundle, "--dataset", "stripes", "--option", "period=2", "--backend", "inverted", "--quiet"]
    fit = _host(capsys, "fit", *common, "--head-type", "float", "--out", head, "--keep-bits", "1")
    assert fit["backend"] == "inverted" and fit["train_images"] == 20 and fit["classes"] == 2
    ev = _host(capsys, "eval", *common, "--head", head, "--keep-bits", "1")
    assert ev["backend"] == "inverted" and ev["images"] == 10 and ev["top1"] >= 0.9

    # the option reaches that backend only: flipped bits are other features, so the head no longer fits them
    flipped = make_backend("inverted", load_bundle(str(bundle)))
    kept = make_backend("inverted", flipped.bundle, flip=False)
    x = np.random.default_rng(0).integers(0, 256, (2,) + tuple(flipped.bundle.input_shape), dtype=np.uint8)
    np.testing.assert_array_equal(flipped.extract(x), -kept.extract(x))
    with pytest.raises(BnnError, match="backend 'inverted': registered already"):
        register_backend(BackendSpec("inverted", InvertedEmulator, "again", lambda bundle: True))


def test_a_dataset_added_to_host_is_one_that_training_reads_too(registered):
    pytest.importorskip("torch")
    from bnn_transfer.train.datasets import open_dataset

    assert len(open_dataset("stripes", "train", period=3)) == 20
    union = open_dataset("stripes+strokes", "train", **{"strokes.num_classes": 2, "strokes.n_train_per_class": 1})
    assert union.classes[:2] == ["horizontal", "vertical"] and len(union) == 22
    with pytest.raises(BnnError, match="dataset stripes: unknown option"):
        open_dataset("stripes", "train", colour=1)


def test_a_board_added_through_the_registry_is_built_for_and_recognised_on_the_board(restored, monkeypatch):
    pytest.importorskip("finn")
    from bnn_transfer.build_fpga.__main__ import build_parser
    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.config import BuildConfig

    # A second Pynq-Z2 under another name: FINN knows its part and platform, so no FINN table changes
    boards.register_board(boards.BoardRecord("pynq-z2-lab", "Pynq-Z2-Lab", "Pynq-Z2", "Pynq-Z2", 90.0, 2.1e9,
                                             "as pynq-z2"))
    board = BuildConfig(board="pynq-z2-lab").target
    assert board == get_board("pynq-z2-lab") and board.part == "xc7z020clg400-1" and board.clock_mhz == 90.0
    assert board.lut == get_board("pynq-z2").lut
    assert "pynq-z2-lab" in build_parser().format_help()
    assert boards.our_board("PYNQ-Z2-LAB") == "pynq-z2-lab"
    monkeypatch.setenv("BOARD", "Pynq-Z2-Lab")
    assert boards.pynq_board() == "Pynq-Z2-Lab"
    with pytest.raises(BnnError, match="registered already"):
        boards.register_board(boards.BoardRecord("pynq-z2-lab", "X", "Pynq-Z2", "Pynq-Z2", 90.0, None, ""))
    with pytest.raises(BnnError, match="its resources must be given"):
        boards.register_board(boards.BoardRecord("new", "New", "Pynq-Z2", None, 90.0, None, ""))
