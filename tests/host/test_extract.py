"""host.extract: a dataset's features through a backend, skipped images, and the on-disk cache."""

import os
import sys

import numpy as np
import pytest
from fake_pynq import FEATURE_WIDTH, make_bundle, tiny_network

from bnn_transfer.host.backends import make_backend
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.datasets import open_dataset
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.extract import cache_path, extract_dataset
from bnn_transfer.host.features import FeatureStore, unpack_features
from bnn_transfer.host.preprocess import Preprocess, eval_transform

SMALL = {"num_classes": 3, "n_train_per_class": 5, "image_size": 16}


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_bundle(tmp_path / "bundle", with_bitfile=False))


@pytest.fixture
def dataset():
    return open_dataset("synthetic-transfer", "train", **SMALL)


def _expected(bundle, dataset, indices=None):
    pp = Preprocess.from_dict(bundle.preprocess)
    idx = range(len(dataset)) if indices is None else indices
    x = np.stack([eval_transform(dataset.load(i), pp) for i in idx])
    return make_backend("emulator", bundle).extract(x)


def test_features_equal_the_backend_on_preprocessed_images(bundle, dataset, tmp_path):
    with make_backend("emulator", bundle) as backend:
        f = extract_dataset(bundle, backend, dataset, batch_size=4, progress=False, workers=2)
    want = _expected(bundle, dataset)
    assert len(np.unique(want, axis=0)) > 3  # the test network does tell the images apart
    assert f.width == FEATURE_WIDTH and f.packed.dtype == np.uint8 and f.packed.shape == (15, 2)
    assert np.array_equal(unpack_features(f.packed, f.width).astype(np.int8), want)
    assert np.array_equal(f.labels, dataset.labels) and np.array_equal(f.indices, np.arange(15))
    assert f.skipped == [] and f.total == 15 and not f.cached and f.backend == "emulator"
    assert f.cache_path is None and f.images_per_s > 0 and 0 < f.backend_seconds <= f.seconds
    assert os.listdir(str(tmp_path)) == ["bundle"]  # no cache_dir: nothing written
    # one thread or several, any batch size: the same rows in the same order
    g = extract_dataset(bundle, "emulator", dataset, batch_size=7, progress=False, workers=1)
    assert np.array_equal(g.packed, f.packed)


def test_second_run_reads_the_cache_without_making_the_backend(bundle, dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_dataset(bundle, "emulator", dataset, cache_dir=str(cache), progress=False)
    assert not first.cached and first.cache_path == cache_path(str(cache), bundle, dataset)
    assert os.listdir(str(cache)) == [os.path.basename(first.cache_path)]
    stored = FeatureStore.load(first.cache_path)
    assert stored.key["bundle_digest"] == bundle.digest and stored.key["dataset"] == dataset.fingerprint()

    # a backend that cannot even be made (no pynq here) proves the cache hit never makes it
    monkeypatch.setitem(sys.modules, "pynq", None)
    second = extract_dataset(bundle, "pynq", dataset, cache_dir=str(cache), progress=False)
    assert second.cached and second.backend is None and second.images_per_s is None
    assert np.array_equal(second.packed, first.packed) and np.array_equal(second.labels, first.labels)
    with pytest.raises(BnnError, match="bundle has no bitfile"):
        extract_dataset(bundle, "pynq", dataset, cache_dir=None, progress=False)


def test_cache_is_keyed_by_bundle_and_image_list(bundle, dataset, tmp_path):
    cache = str(tmp_path / "cache")
    extract_dataset(bundle, "emulator", dataset, cache_dir=cache, progress=False)
    other = load_bundle(make_bundle(tmp_path / "other", with_bitfile=False, network=tiny_network(seed=1)))
    f = extract_dataset(other, "emulator", dataset, cache_dir=cache, progress=False)
    assert not f.cached  # another backbone: its own cache file
    more = open_dataset("synthetic-transfer", "train", **dict(SMALL, n_train_per_class=6))
    g = extract_dataset(bundle, "emulator", more, cache_dir=cache, progress=False)
    assert not g.cached and len(g) == 18
    assert len(os.listdir(cache)) == 3
    assert extract_dataset(bundle, "emulator", more, cache_dir=cache, progress=False).cached


def test_a_broken_cache_is_reported_and_rebuilt(bundle, dataset, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    first = extract_dataset(bundle, "emulator", dataset, cache_dir=cache, progress=False)
    with open(first.cache_path, "wb") as f:
        f.write(b"not an npz")
    again = extract_dataset(bundle, "emulator", dataset, cache_dir=cache, progress=False)
    err = capsys.readouterr().err
    assert "warning: %s: not a readable feature cache" % first.cache_path in err and "recomputing" in err
    assert not again.cached and np.array_equal(again.packed, first.packed)
    assert extract_dataset(bundle, "emulator", dataset, cache_dir=cache, progress=False).cached


def test_unreadable_images_are_skipped_counted_and_reported_once(bundle, tmp_path, image_tools, capsys):
    root = tmp_path / "data"
    for k, c in enumerate(["cat", "dog"]):
        for j in range(3):
            image_tools.write_image(root / c / ("%d.png" % j), seed=k)
    bad = str(image_tools.write_corrupt(root / "cat" / "1b.jpg"))
    truncated = str(image_tools.write_truncated(root / "dog" / "9.jpg"))
    ds = open_dataset("folder", "train", str(root), test_fraction=0.0)
    assert len(ds) == 8
    cache = str(tmp_path / "cache")
    f = extract_dataset(bundle, "emulator", ds, batch_size=3, cache_dir=cache, progress=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["warning: skipped 2 unreadable images of 8 (first: %s: cannot decode image (%s"
                     % (bad, lines[0].split(": cannot decode image (", 1)[1])]
    sources = [ds.source(i) for i in range(8)]
    assert [i for i, _ in f.skipped] == [sources.index(bad), sources.index(truncated)]
    readable = [i for i in range(8) if sources[i] not in (bad, truncated)]
    assert f.indices.tolist() == readable and f.labels.tolist() == ds.labels[readable].tolist()
    assert np.array_equal(unpack_features(f.packed, f.width).astype(np.int8), _expected(bundle, ds, readable))

    g = extract_dataset(bundle, "emulator", ds, cache_dir=cache, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert g.cached and len(err) == 1 and err[0].startswith("warning: skipped 2 unreadable images of 8 (first: %s"
                                                            % bad)
    assert g.indices.tolist() == readable and np.array_equal(g.packed, f.packed)


def test_no_readable_image_is_an_error(bundle, tmp_path, image_tools):
    root = tmp_path / "data"
    image_tools.write_corrupt(root / "a" / "x.jpg")
    image_tools.write_corrupt(root / "b" / "y.jpg")
    ds = open_dataset("folder", "train", str(root), test_fraction=0.0)
    with pytest.raises(BnnError, match=r"folder/train: none of the 2 images could be read \(first: .*x\.jpg"):
        extract_dataset(bundle, "emulator", ds, cache_dir=str(tmp_path / "cache"), progress=False)
    assert not os.path.exists(str(tmp_path / "cache")) or os.listdir(str(tmp_path / "cache")) == []


def test_bad_batch_size(bundle, dataset):
    with pytest.raises(BnnError, match="batch_size: expected a positive integer"):
        extract_dataset(bundle, "emulator", dataset, batch_size=0, progress=False)


def test_an_unwritable_cache_folder_costs_only_a_warning(bundle, dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    f = extract_dataset(bundle, "emulator", dataset, cache_dir=str(blocker / "cache"), progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: %s" % (blocker / "cache")) and "cannot write" in err[0]
    assert f.cache_path is None and len(f) == 15
