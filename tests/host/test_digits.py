"""host.digits: the real-image dataset read from scikit-learn's table without scikit-learn."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

from bnn_transfer.host.datasets import open_dataset
from bnn_transfer.host.digits import FILE_NAME, default_path
from bnn_transfer.host.errors import BnnError

pytestmark = pytest.mark.skipif(default_path() is None, reason="scikit-learn (which ships the digits) is not installed")


def test_splits_are_stratified_disjoint_and_seeded():
    tr, te = open_dataset("digits", "train"), open_dataset("digits", "test")
    assert (len(tr), len(te)) == (1198, 599) and tr.classes == [str(c) for c in range(10)]
    assert np.all(np.abs(te.class_counts() - tr.class_counts() / 2) <= 1)
    src_tr, src_te = {tr.source(i) for i in range(len(tr))}, {te.source(i) for i in range(len(te))}
    assert not src_tr & src_te and len(src_tr | src_te) == 1797
    other = open_dataset("digits", "test", seed=1)
    assert {other.source(i) for i in range(len(other))} != src_te
    img = tr.load(0)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8 and np.array_equal(img[..., 0], img[..., 2])
    assert img.max() == 255 and img.min() < 128  # white paper, dark ink


def test_the_pixels_are_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    te = open_dataset("digits", "test")
    for i in (0, 100, 598):
        row = te.rows[i]
        assert np.array_equal(te.load(i)[..., 0], np.round(255 - ref.images[row] * 255 / 16).astype(np.uint8))
        assert te.labels[i] == ref.target[row]


def test_reading_needs_no_sklearn_import():
    code = ("import sys; from host.datasets import open_dataset; open_dataset('digits', 'train').load(3); "
            "assert 'sklearn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_tables_and_options_are_one_line_errors(tmp_path):
    with pytest.raises(BnnError, match="not found"):
        open_dataset("digits", "train", data_dir=str(tmp_path))
    with gzip.open(str(tmp_path / FILE_NAME), "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(BnnError, match="expected rows of 64 pixel values and a label"):
        open_dataset("digits", "train", data_dir=str(tmp_path))
    (tmp_path / FILE_NAME).write_bytes(b"not gzip")
    with pytest.raises(BnnError, match="not a readable digits table"):
        open_dataset("digits", "train", data_dir=str(tmp_path))
    with pytest.raises(BnnError, match="test_fraction"):
        open_dataset("digits", "train", test_fraction=1.5)
    with pytest.raises(BnnError, match="unknown option"):
        open_dataset("digits", "train", size=3)
