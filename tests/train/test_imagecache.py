import json
import os
import pickle

import numpy as np
import pytest

from bnn_transfer.host.datasets import open_dataset
from bnn_transfer.host.errors import BnnError, ImageError
from bnn_transfer.host.preprocess import decode_image, resize_longest_side
from bnn_transfer.train.imagecache import ImageCache


@pytest.fixture
def folder_with_bad_images(tmp_path, image_tools):
    """DIR/train, DIR/test class folders; train holds one corrupt and one truncated JPEG."""
    root = tmp_path / "data"
    sizes = [(30, 50), (64, 20), (37, 37), (10, 12)]
    for k, c in enumerate(["a", "b"]):
        for j, size in enumerate(sizes):
            image_tools.write_image(root / "train" / c / ("%d.jpg" % j), seed=k * 10 + j, size=size)
        image_tools.write_image(root / "test" / c / "0.png", seed=k)
    image_tools.write_corrupt(root / "train" / "a" / "2_corrupt.jpg")
    image_tools.write_truncated(root / "train" / "b" / "9_truncated.jpg")
    return root


def cache_files(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".npy"))


def test_build_records_bad_images_and_matches_direct_decoding(folder_with_bad_images, tmp_path, capsys):
    ds = open_dataset("folder", "train", str(folder_with_bad_images))
    cache = ImageCache(ds, 37, tmp_path / "cache", workers=3, progress=False)
    assert cache.rebuilt and len(cache) == len(ds) == 10
    bad = {i for i in range(len(ds)) if "corrupt" in ds.source(i) or "truncated" in ds.source(i)}
    assert set(cache.bad) == bad and len(bad) == 2
    for i in bad:
        assert cache.bad[i].startswith(ds.source(i) + ": cannot decode image")
        assert not cache.is_valid(i)
        with pytest.raises(ImageError):
            cache.get(i)
    assert cache.valid_indices().tolist() == sorted(set(range(len(ds))) - bad)
    for i in cache.valid_indices():
        expect = resize_longest_side(decode_image(ds.source(i)), 37)
        got = cache.get(i)
        assert max(got.shape[:2]) == 37
        np.testing.assert_array_equal(got, expect)
    err = capsys.readouterr().err
    first = min(bad)
    assert "skipped 2 unreadable images of 10 (first: %s: cannot decode image" % ds.source(first) in err
    index = json.loads((tmp_path / "cache" / os.path.basename(cache.index_path)).read_text())
    assert index["fingerprint"] == ds.fingerprint() and index["resize_longest"] == 37
    assert sorted(i for i, _ in index["bad"]) == sorted(bad)


def test_reuse_rebuild_when_stale_and_coexisting_sizes(folder_with_bad_images, tmp_path, image_tools):
    root, cdir = folder_with_bad_images, tmp_path / "cache"
    ds = open_dataset("folder", "train", str(root))
    first = ImageCache(ds, 37, cdir, progress=False, quiet=True)
    again = ImageCache(open_dataset("folder", "train", str(root)), 37, cdir, progress=False, quiet=True)
    assert first.rebuilt and not again.rebuilt and again.bad == first.bad
    np.testing.assert_array_equal(again.get(0), first.get(0))
    # Another size is another cache; the first one stays valid.
    other = ImageCache(ds, 20, cdir, workers=1, progress=False, quiet=True)
    assert other.rebuilt and max(other.get(0).shape[:2]) == 20
    assert not ImageCache(ds, 37, cdir, progress=False, quiet=True).rebuilt
    files_before = cache_files(cdir)
    # A new image changes the fingerprint: the cache is rebuilt and its stale files go away.
    image_tools.write_image(root / "train" / "b" / "new.png", seed=99)
    ds2 = open_dataset("folder", "train", str(root))
    fresh = ImageCache(ds2, 37, cdir, progress=False, quiet=True)
    assert fresh.rebuilt and len(fresh) == 11
    assert len(cache_files(cdir)) == len(files_before)  # 2 files per cache, old build removed
    assert not set(cache_files(cdir)) >= set(files_before)
    # The test split of the same folder is a separate cache.
    assert ImageCache(open_dataset("folder", "test", str(root)), 37, cdir, progress=False).rebuilt


def test_damaged_cache_is_rebuilt(folder_with_bad_images, tmp_path):
    cdir = tmp_path / "cache"
    ds = open_dataset("folder", "test", str(folder_with_bad_images))
    cache = ImageCache(ds, 37, cdir, progress=False)
    reference = cache.get(1).copy()
    with open(cache.index_path, "w") as f:
        f.write("{not json")
    assert ImageCache(ds, 37, cdir, progress=False).rebuilt
    os.unlink(ImageCache(ds, 37, cdir, progress=False).pixels_path)
    rebuilt = ImageCache(ds, 37, cdir, progress=False)
    assert rebuilt.rebuilt
    np.testing.assert_array_equal(rebuilt.get(1), reference)
    with pytest.raises(BnnError):
        ImageCache(ds, 0, cdir)


def test_synthetic_cache_and_pickling(tmp_path):
    ds = open_dataset("synthetic-transfer", "test", n_test_per_class=3)
    cache = ImageCache(ds, 37, tmp_path, progress=False)
    assert not cache.bad and cache.valid_indices().tolist() == list(range(len(ds)))
    for i in range(len(ds)):
        np.testing.assert_array_equal(cache.get(i), resize_longest_side(ds.load(i), 37))
    cache.get(0)  # opens the memmap
    blob = pickle.dumps(cache)
    assert len(blob) < 20000  # the pixels stay on disk, not in the pickle sent to workers
    np.testing.assert_array_equal(pickle.loads(blob).get(3), cache.get(3))
    with pytest.raises(ValueError):
        cache.get(0)[0, 0, 0] = 1  # read-only view
