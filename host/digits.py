"""``digits``: real handwritten digits, the labelled image set that installs offline with scikit-learn.

1,797 scans of handwritten digits 0-9 (UCI "Optical Recognition of Handwritten Digits", 43 writers),
8 x 8 pixels of 17 grey levels, as scikit-learn ships them in ``sklearn/datasets/data/digits.csv.gz``
(one row per image: 64 pixel values 0..16, then the label). They are real scans, not rendered by
this project, and share nothing with the ``synthetic`` pretraining data: the task that shows whether
frozen features transfer to real images. The file is read with numpy only (scikit-learn is located,
not imported), so a board can also use a copy of it through ``data_dir``.

Images are dark ink on white paper (as the scans were), grey RGB uint8 at their native 8 x 8; the
usual preprocessing scales them to the network's input. The split is stratified and seeded: a
``test_fraction`` of each digit is held out.
"""

import gzip
import importlib.util
import os
import zlib

import numpy as np

from .errors import BnnError
from .imagedataset import ImageDataset
from .inputs import regular_file

FILE_NAME = "digits.csv.gz"
OPTIONS = {"seed": 0, "test_fraction": 1.0 / 3.0}
_CACHE = {}


def default_path():
    """Where scikit-learn keeps the file, without importing scikit-learn; None when it is not installed."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", FILE_NAME)


def read_digits(path):
    """(images uint8 (N, 8, 8, 3), labels int64 (N,)) from the gzipped CSV; bad content raises BnnError."""
    path = os.path.abspath(path)
    if path not in _CACHE:
        try:
            with gzip.open(regular_file(path), "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        except (OSError, ValueError, EOFError) as e:
            raise BnnError("%s: not a readable digits table (%s)" % (path, e)) from None
        if table.shape[1] != 65 or table.shape[0] < 2 or not np.all(np.isfinite(table)):
            raise BnnError("%s: expected rows of 64 pixel values and a label, got shape %r" % (path, table.shape))
        pixels, labels = table[:, :64], table[:, 64]
        if pixels.min() < 0 or pixels.max() > 16 or np.any(labels != np.round(labels)) or not (
                0 <= labels.min() and labels.max() <= 9):
            raise BnnError("%s: pixel values must lie in 0..16 and labels in 0..9" % path)
        grey = np.round(255.0 - pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
        _CACHE[path] = (np.repeat(grey[..., None], 3, axis=3), labels.astype(np.int64))
    return _CACHE[path]


class DigitsDataset(ImageDataset):
    """One split of ``digits``; ``load(i)`` returns the 8 x 8 x 3 uint8 scan."""

    def __init__(self, split, data_dir=None, seed=0, test_fraction=OPTIONS["test_fraction"]):
        path = os.path.join(data_dir, FILE_NAME) if data_dir else default_path()
        if path is None:
            raise BnnError("digits: scikit-learn is not installed; give --data-dir, a folder holding %s" % FILE_NAME)
        if not os.path.isfile(path):
            raise BnnError("%s: not found (the digits table of scikit-learn)" % path)
        try:
            seed, test_fraction = int(seed), float(test_fraction)
        except (TypeError, ValueError):
            raise BnnError("digits: seed must be an integer and test_fraction a number") from None
        if not 0.0 < test_fraction < 1.0:
            raise BnnError("digits: test_fraction=%r must be in (0, 1)" % test_fraction)
        images, labels = read_digits(path)
        rows = []
        for c in range(10):
            idx = np.flatnonzero(labels == c)
            n_test = min(idx.size - 1, max(1, int(round(test_fraction * idx.size))))
            # seeded per class, as the folder reader does
            perm = np.random.default_rng([seed, zlib.crc32(str(c).encode())]).permutation(idx)
            rows.append(np.sort(perm[:n_test] if split == "test" else perm[n_test:]))
        self.rows = np.concatenate(rows)
        self.images = images
        # the table's checksum in every source id: another version of the file keys other caches
        self.table_crc = "%08x" % zlib.crc32(images.tobytes())
        self.native_size = 8
        super().__init__("digits", split, os.path.dirname(path), [str(c) for c in range(10)], None,
                         labels[self.rows], None, {"seed": seed, "test_fraction": test_fraction})

    def source(self, i):
        return "digits://%s/%d" % (self.table_crc, int(self.rows[int(i)]))

    def load(self, i):
        return self.images[int(self.rows[int(i)])]
