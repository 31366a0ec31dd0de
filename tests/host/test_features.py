"""host.features: +-1 features packed as bits, and the on-disk feature cache."""

import os

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.features import FeatureStore, pack_features, packed_width, unpack_features

KEY = {"bundle_sha256": "ab" * 32, "images": {"count": 3, "sha256": "cd" * 32}, "backend": "emulator"}


def pm1(rng, n, d):
    return rng.choice(np.array([-1, 1], np.int8), (n, d))


def test_bit_convention_is_packbits_msb_first_one_is_plus_one():
    x = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1]], np.int8)
    assert pack_features(x).tolist() == [[0x80, 0x40]]
    assert np.array_equal(pack_features(x), np.packbits(x > 0, axis=1))


@pytest.mark.parametrize("d", [1, 7, 8, 13, 4096])
def test_roundtrip_and_row_selection(d):
    rng = np.random.default_rng(d)
    x = pm1(rng, 11, d)
    p = pack_features(x.astype(np.float32))
    assert p.dtype == np.uint8 and p.shape == (11, packed_width(d))
    full = unpack_features(p, d)
    assert full.dtype == np.float32 and np.array_equal(full, x)
    assert np.array_equal(unpack_features(p, d, slice(3, 7)), x[3:7])
    idx = np.array([10, 0, 4])
    assert np.array_equal(unpack_features(p, d, idx), x[idx])
    assert np.array_equal(unpack_features(p, d, idx, dtype=np.int8), x[idx])
    assert np.array_equal(unpack_features(p, d, idx, scale=0.25), x[idx] * np.float32(0.25))


def test_pack_features_rejects_values_other_than_pm1():
    with pytest.raises(BnnError, match="-1 or \\+1"):
        pack_features(np.array([[1, 0, -1]]))
    with pytest.raises(BnnError, match="-1 or \\+1"):
        pack_features(np.array([[0.5, 1.0]]))


def test_unpack_features_checks_width():
    p = np.zeros((2, 2), np.uint8)
    with pytest.raises(BnnError, match="cannot hold 17"):
        unpack_features(p, 17)
    with pytest.raises(BnnError, match="packed uint8"):
        unpack_features(p.astype(np.int8), 16)


def test_store_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    x = pm1(rng, 20, 100)
    labels = rng.integers(0, 5, 20)
    path = str(tmp_path / "cache" / "features.npz")
    FeatureStore.save(path, pack_features(x), labels, 100, KEY)
    assert sorted(os.listdir(tmp_path / "cache")) == ["features.npz"]  # no temp file left behind
    f = FeatureStore.load(path, KEY)
    assert f is not None and len(f) == 20 and f.width == 100 and f.key == KEY
    assert f.labels.dtype == np.int64 and np.array_equal(f.labels, labels)
    assert np.array_equal(f.unpack(), x)
    assert FeatureStore.load(path) is not None  # no expectation: any key


def test_store_stale_key_and_missing_file_give_none(tmp_path):
    path = str(tmp_path / "f.npz")
    assert FeatureStore.load(path, KEY) is None
    FeatureStore.save(path, np.zeros((2, 1), np.uint8), np.array([0, 1]), 3, KEY)
    assert FeatureStore.load(path, dict(KEY, bundle_sha256="ef" * 32)) is None
    assert FeatureStore.load(path, dict(KEY, extra=1)) is None
    # key order and tuple/list do not matter: both are the same JSON
    reordered = {"backend": "emulator", "images": {"sha256": "cd" * 32, "count": 3}, "bundle_sha256": "ab" * 32}
    assert FeatureStore.load(path, reordered) is not None
    FeatureStore.save(path, np.zeros((2, 1), np.uint8), np.array([0, 1]), 3, {"shape": (1, 2)})
    assert FeatureStore.load(path, {"shape": [1, 2]}) is not None


def test_store_rejects_bad_arrays_and_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "f.npz")
    FeatureStore.save(path, np.zeros((2, 1), np.uint8), np.array([0, 1]), 8, KEY)
    before = open(path, "rb").read()
    with pytest.raises(BnnError, match="f.npz: features must be packed"):
        FeatureStore.save(path, np.zeros((2, 2), np.uint8), np.array([0, 1]), 8, KEY)
    with pytest.raises(BnnError, match="labels"):
        FeatureStore.save(path, np.zeros((2, 1), np.uint8), np.array([0.0, 1.0]), 8, KEY)
    with pytest.raises(BnnError, match="key must be a dict"):
        FeatureStore.save(path, np.zeros((2, 1), np.uint8), np.array([0, 1]), 8, "key")
    assert open(path, "rb").read() == before


def test_corrupt_files_raise_with_the_path(tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "f.npz")
    FeatureStore.save(path, pack_features(pm1(rng, 50, 64)), rng.integers(0, 3, 50), 64, KEY)
    data = open(path, "rb").read()

    bad = str(tmp_path / "truncated.npz")
    open(bad, "wb").write(data[: len(data) // 2])
    with pytest.raises(BnnError, match="truncated.npz: "):
        FeatureStore.load(bad, KEY)

    bad = str(tmp_path / "text.npz")
    open(bad, "w").write("not a zip")
    with pytest.raises(BnnError, match="text.npz: not a readable feature cache"):
        FeatureStore.load(bad, KEY)

    # a consistent npz whose contents were edited: the digest catches it
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["packed"] = arrays["packed"].copy()
    arrays["packed"][3, 2] ^= 1
    bad = str(tmp_path / "edited.npz")
    np.savez(bad, **arrays)
    with pytest.raises(BnnError, match="edited.npz: feature cache is corrupt"):
        FeatureStore.load(bad, KEY)

    arrays["format"] = np.array("something else")
    bad = str(tmp_path / "other.npz")
    np.savez(bad, **arrays)
    with pytest.raises(BnnError, match="other.npz: not a bnn-transfer feature cache"):
        FeatureStore.load(bad, KEY)

    # pickled object arrays are refused, never unpickled
    bad = str(tmp_path / "pickled.npz")
    np.savez(bad, format=np.array(["bnn-transfer/features", None], dtype=object))
    with pytest.raises(BnnError, match="pickled.npz: "):
        FeatureStore.load(bad, KEY)
