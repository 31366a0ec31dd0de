import numpy as np
import pytest

from bnn_transfer.host import emulator
from bnn_transfer.host.emulator import Emulator, load_emulator, max_pool, save_emulator
from bnn_transfer.host.errors import BnnError


def _reference_conv(x, w, t, k, stride, pad, pad_value):
    """Direct loops: the definition the vectorised emulator must reproduce."""
    n, h, wd, c = x.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value)
    oh = (h + 2 * pad - k) // stride + 1
    out = np.empty((n, oh, oh, w.shape[0]), np.int64)
    for i in range(oh):
        for j in range(oh):
            patch = xp[:, i * stride: i * stride + k, j * stride: j * stride + k, :].reshape(n, -1)
            acc = patch @ w.T.astype(np.int64)
            out[:, i, j, :] = np.where(acc >= t, 1, -1)
    return out


def _net(rng):
    w1 = rng.choice([-1, 1], size=(4, 3 * 3 * 3)).astype(np.int8)
    t1 = rng.integers(-200, 200, size=4)
    w2 = rng.choice([-1, 1], size=(6, 2 * 2 * 4)).astype(np.int8)
    t2 = rng.integers(-4, 5, size=6)
    w3 = rng.choice([-1, 1], size=(5, 6 * 2 * 2)).astype(np.int8)
    t3 = rng.integers(-3, 4, size=5)
    spec = {"input": {"shape": [9, 9, 3], "datatype": "UINT8"}, "layers": [
        {"name": "conv1", "kind": "conv", "kernel": 3, "stride": 1, "padding": 1, "pad_value": 0.0, "pool": [2, 2],
         "in_shape": [9, 9, 3], "out_shape": [4, 4, 4]},
        {"name": "conv2", "kind": "conv", "kernel": 2, "stride": 1, "padding": 1, "pad_value": -1.0, "pool": [2, 2],
         "in_shape": [4, 4, 4], "out_shape": [2, 2, 6]},
        {"name": "fc1", "kind": "fc", "kernel": None, "stride": 1, "padding": 0, "pad_value": 0.0, "pool": None,
         "in_shape": [24], "out_shape": [5]},
    ]}
    return spec, [w1, w2, w3], [t1, t2, t3]


@pytest.mark.parametrize("fc_block_bytes", [None, 200])
def test_emulator_matches_direct_loops_including_ties_padding_and_pooling(fc_block_bytes, monkeypatch):
    """Also with fc1's weights (480 bytes as float32) over the block size: kept int8, cast 2 columns at a time."""
    if fc_block_bytes:
        monkeypatch.setattr(emulator, "_FC_BLOCK_BYTES", fc_block_bytes)
    rng = np.random.default_rng(0)
    spec, ws, ts = _net(rng)
    x = rng.integers(0, 256, size=(5, 9, 9, 3)).astype(np.uint8)
    y1 = _reference_conv(x, ws[0], ts[0], 3, 1, 1, 0)
    y1 = y1[:, :8, :8].reshape(5, 4, 2, 4, 2, 4).max(axis=(2, 4))
    y2 = _reference_conv(y1, ws[1], ts[1], 2, 1, 1, -1)
    y2 = y2[:, :4, :4].reshape(5, 2, 2, 2, 2, 6).max(axis=(2, 4))
    y3 = np.where(y2.reshape(5, -1) @ ws[2].T.astype(np.int64) >= ts[2], 1, -1)
    em = Emulator(spec, ws, ts)
    assert [w.dtype for w in em.w] == [np.float32, np.float32, np.int8 if fc_block_bytes else np.float32]
    got = em.extract(x, batch_size=2)
    assert got.dtype == np.int8
    assert np.array_equal(got, y3)


def test_max_pool_overlapping():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    y = max_pool(x, 3, 2)
    assert y.shape == (2, 2, 2, 1)
    assert y[0, 0, 0, 0] == x[0, 2, 2, 0] and y[1, 1, 1, 0] == x[1, 4, 4, 0]


def test_save_load_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    spec, ws, ts = _net(rng)
    p = tmp_path / "emulator.npz"
    save_emulator(str(p), spec, ws, ts)
    em = load_emulator(str(p))
    x = rng.integers(0, 256, size=(3, 9, 9, 3)).astype(np.uint8)
    assert np.array_equal(em.extract(x), Emulator(spec, ws, ts).extract(x))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BnnError, match="bad.npz: cannot read emulator weights"):
        load_emulator(str(bad))
    with pytest.raises(BnnError, match="expects uint8 images of shape"):
        em.extract(x.astype(np.float32))
