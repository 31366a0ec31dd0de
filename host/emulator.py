"""A bit-exact numpy emulator of the accelerator, from the bundle's emulator weights.

Every frozen layer computes ``out = +1 if acc >= T else -1`` with ``acc = sum(w * x)``, w in
{-1, +1}, x the uint8 image (first layer) or the previous +-1 map. Images are NHWC, as FINN's
accelerator takes them; convolutions are im2col + one matrix product. The matrix product runs in
float32 BLAS: every partial sum is an integer below 2**24 (checked when the emulator is built), so
it is exact, and BLAS is much faster than popcounts in numpy (numpy has no popcount matrix
product: xnor + popcount would need a (rows, out, fan_in / 8) intermediate per layer).

Where the time goes (measured with ``python -m bench``): the matrix products, at BLAS speed, once
the elementwise work around them is cheap. So the image is cast to float32 inside the im2col copy
(one pass, no separate float copy of the image); max pooling runs on the accumulators before the
threshold (the threshold is monotone per channel, so ``max(sign(acc - T)) == sign(max(acc) - T)``,
on a quarter of the elements for 2x2 pools); binary maps travel as 0/1 bytes with the thresholds
moved to that domain, so a layer's output is one comparison and the next im2col copy casts it; and
im2col is done in chunks of images so that its buffer stays small (a 512 MB board; and a chunk that
fits the cache is consumed by BLAS right away).

Memory (a Pynq-Z2 leaves Python about 350 MB): a conv layer's weights serve every output pixel, so
they are cast to float32 once (the paper preset's convs: 15 MB); a fully connected layer's serve one
product per batch, so a large one keeps its int8 weights and casts a block of them at a time (the
paper preset's fc1 and fc2, 54.5 M weights: 55 MB instead of 218 MB as float32).

File format (``emulator.npz``, no pickle):
  spec                JSON string: {"format", "input": {"shape": [H, W, C], "datatype": "UINT8"},
                      "layers": [{"name", "kind": "conv"|"fc", "kernel", "stride", "padding",
                      "pad_value", "pool": [k, s] or null, "in_shape", "out_shape"}]}
  <name>.weight       int8 +-1, (out, fan_in); conv columns in (kh, kw, c) order, the first FC
                      after the convs in (h, w, c) order (NHWC flattening)
  <name>.threshold    int64, (out,)
"""

import json
from typing import Any, Dict, List, Sequence, cast

import numpy as np

from .errors import BnnError
from .inputs import loads_json
from .npzfile import open_npz

FORMAT = "bnn-transfer/emulator/v1"

# float32 represents every integer up to 2**24 exactly, so sums of +-x stay exact below it.
_EXACT_LIMIT = 1 << 24
# im2col buffer per chunk of images: large enough for BLAS to run at full speed, small enough for
# a board's RAM (64 paper-size images at once would need 450 MB for conv2 alone).
_IM2COL_BYTES = 16 << 20
# float32 bytes of an fc layer's weights above which they stay int8 and are cast block by block
_FC_BLOCK_BYTES = 8 << 20


def _patches(x: np.ndarray, k: int, s: int, oh: int, ow: int) -> np.ndarray:
    """The first (oh, ow) im2col patches of NHWC ``x`` as an (N, oh, ow, k, k*C) view.

    One patch row (kw, c) is contiguous in a C-contiguous NHWC map, so it is one axis here: the
    im2col copy then moves runs of k*C values instead of C (3 for the image: 3x faster).
    """
    x = np.ascontiguousarray(x)
    sn, sh, sw, sc = x.strides
    # np.ndarray over x's buffer, not as_strided: same view, a tenth of the call overhead (~1 us vs
    # ~10 us, a tenth of the tiny preset's batch-1 time over its five convs); never written to
    return np.ndarray((x.shape[0], oh, ow, k, k * x.shape[3]), x.dtype, buffer=x,
                      strides=(sn, sh * s, sw * s, sh, sc))


def _pad(x: np.ndarray, p: int, value: float) -> np.ndarray:
    """NHWC ``x`` with ``p`` rows/columns of ``value`` around each map (np.pad is ~5x slower on small maps)."""
    n, h, w, c = x.shape
    out = np.full((n, h + 2 * p, w + 2 * p, c), value, dtype=x.dtype)
    out[:, p: p + h, p: p + w] = x
    return out


def max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Max pool (window k, stride s, no padding, floor) of NHWC ``x``; returns a new array.

    k*k elementwise maxima of strided slices: each runs vectorised over contiguous channel runs,
    where a reduction over the window axes of a 6-D view steps through tiny windows one by one
    (1.6x slower on the tiny preset's first pool).
    """
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.array(x[:, 0: s * (oh - 1) + 1: s, 0: s * (ow - 1) + 1: s, :], copy=True, order="C")
    for i in range(k):
        for j in range(k):
            if i or j:
                np.maximum(out, x[:, i: i + s * (oh - 1) + 1: s, j: j + s * (ow - 1) + 1: s, :], out=out)
    return out


def _bits(acc: np.ndarray, t: np.ndarray) -> np.ndarray:
    """uint8 bits of ``acc >= t`` (1 = +1). Exact: acc and t are multiples of 1/2 far below 2**23 (a
    threshold beyond 2**24 rounds in float32 but stays beyond every reachable accumulator)."""
    return np.greater_equal(acc, t).view(np.uint8)


def _fc_acc(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float32 ``x @ w``, ``w`` an fc layer's (fan_in, out) weights: float32, or int8 cast a few columns at a time."""
    x = x.astype(np.float32)
    if w.dtype == np.float32:
        return np.matmul(x, w)
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    # Every row of the batch reuses a block: a few rows are memory-bound (a 1 MB block stays in the
    # cache), many are compute-bound (wider blocks keep BLAS efficient), up to _FC_BLOCK_BYTES.
    block = min(_FC_BLOCK_BYTES, max(1 << 20, x.shape[0] << 17))
    cols = max(1, block // (4 * w.shape[0]))
    for j in range(0, w.shape[1], cols):
        out[:, j: j + cols] = np.matmul(x, w[:, j: j + cols].astype(np.float32))
    return out


def _all_pm1(w: np.ndarray) -> bool:
    """Every element of ``w`` is -1 or +1, checked in slices (no temporaries the size of fc1's 38 M weights)."""
    flat = w.reshape(-1)
    step = 1 << 20
    return all(np.all(np.abs(flat[i: i + step]) == 1) for i in range(0, flat.size, step))


def _pm1(bits: np.ndarray) -> np.ndarray:
    """float32 +-1 from 0/1 bits."""
    out = bits.astype(np.float32)
    out *= np.float32(2)
    out -= np.float32(1)
    return out


class Emulator:
    """``extract(images_nhwc_uint8) -> (N, D) int8 +-1 features``."""

    def __init__(self, spec: Dict[str, Any], weights: Sequence[np.ndarray], thresholds: Sequence[np.ndarray]) -> None:
        self.spec = spec
        self.layers = spec["layers"]
        self.input_shape = tuple(spec["input"]["shape"])
        # (fan_in, out): float32, or int8 for a large fc layer (see the module docstring)
        self.w = [np.ascontiguousarray(w, dtype=np.int8 if layer["kind"] == "fc" and 4 * np.size(w) > _FC_BLOCK_BYTES
                                       else np.float32).T for layer, w in zip(self.layers, weights)]
        # Binary maps travel as bits b = (x + 1) / 2 (uint8 0/1: a quarter of float32's memory traffic,
        # and no +-1 conversion pass). For x in {-1, +1}: w.x = 2 w.b - sum(w), so w.x >= T becomes
        # w.b >= (T + sum(w)) / 2, a multiple of 1/2: exact in float32 (FINN's popcount domain).
        self.t = []
        for i, (w, t) in enumerate(zip(self.w, thresholds)):
            t = np.asarray(t, dtype=np.float64)
            if i:
                t = (t + w.sum(axis=0, dtype=np.float64)) / 2
            self.t.append(t.astype(np.float32))
        for i, (layer, w, t) in enumerate(zip(self.layers, self.w, self.t)):
            if w.shape[1] != t.shape[0]:
                raise BnnError("emulator layer %s: %d thresholds for %d outputs"
                               % (layer["name"], t.shape[0], w.shape[1]))
            # the first layer sees pixels up to 255, the others +-1
            if w.shape[0] * (255 if i == 0 else 1) >= _EXACT_LIMIT:
                raise BnnError("emulator layer %s: fan-in %d is too large for exact float32 sums"
                               % (layer["name"], w.shape[0]))

    @property
    def feature_width(self) -> int:
        return int(self.w[-1].shape[1])

    def _check(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.dtype != np.uint8:
            raise BnnError("emulator expects uint8 images of shape (N, %d, %d, %d), got %s %s"
                           % (self.input_shape + (x.dtype, x.shape)))
        return x

    def _conv(self, x: np.ndarray, layer: Dict[str, Any], w: np.ndarray, t: np.ndarray, first: bool) -> np.ndarray:
        """One conv layer (+ pool) on NHWC ``x`` (the uint8 image, or bits): uint8 bits, NHWC."""
        p = layer["padding"]
        if p:
            pv = layer["pad_value"] if first else (layer["pad_value"] + 1) / 2.0  # -1 -> bit 0, +1 -> bit 1
            if x.dtype == np.uint8 and not (0 <= pv <= 255 and pv == int(pv)):
                x = x.astype(np.float32)  # e.g. a 0 on a +-1 map is 1/2 in the bit domain
            x = _pad(x, p, pv)
        k, s = layer["kernel"], layer["stride"]
        n = x.shape[0]
        oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
        pool = layer.get("pool")
        if pool:
            # a floor-mode pool never reads the last row/column of an odd map: don't compute it
            pk, ps = pool
            oh, ow = ps * ((oh - pk) // ps) + pk, ps * ((ow - pk) // ps) + pk
        fan_in = w.shape[0]
        chunk = max(1, min(n, _IM2COL_BYTES // (oh * ow * fan_in * 4)))
        out = None
        for i in range(0, max(n, 1), chunk):  # once for n == 0: empty arrays keep their shapes
            win = _patches(x[i: i + chunk], k, s, oh, ow)
            cols = np.empty(win.shape, np.float32)
            np.copyto(cols, win)  # gather and cast in one pass
            acc = np.matmul(cols.reshape(-1, fan_in), w).reshape(win.shape[:3] + (w.shape[1],))
            del cols
            if pool:
                acc = max_pool(acc, *pool)
            y = _bits(acc, t)
            if chunk >= n:
                return y
            if out is None:
                out = np.empty((n,) + y.shape[1:], np.uint8)
            out[i: i + chunk] = y
        return cast(np.ndarray, out)  # n > chunk: the loop's first pass allocated it

    def _forward(self, x: np.ndarray, keep_all: bool) -> List[np.ndarray]:
        """Every layer's output bits (keep_all) or the last one's, as uint8 0/1."""
        outs = []
        for i, (layer, w, t) in enumerate(zip(self.layers, self.w, self.t)):
            if layer["kind"] == "conv":
                x = self._conv(x, layer, w, t, first=i == 0)
            else:
                x = _bits(_fc_acc(x.reshape(x.shape[0], w.shape[0]), w), t)
            if keep_all:
                outs.append(x)
        return outs if keep_all else [x]

    def layer_outputs(self, images: Any) -> List[np.ndarray]:
        """Every layer's +-1 output (float32; NHWC for convs), for divergence reports."""
        return [_pm1(b) for b in self._forward(self._check(images), keep_all=True)]

    def extract(self, images: Any, batch_size: int = 64) -> np.ndarray:
        images = self._check(images)
        out = np.empty((images.shape[0], self.feature_width), dtype=np.int8)
        for i in range(0, images.shape[0], batch_size):
            bits = self._forward(images[i: i + batch_size], keep_all=False)[-1]
            np.subtract(bits.reshape(-1, self.feature_width).view(np.int8) * np.int8(2), np.int8(1),
                        out=out[i: i + batch_size])
        return out


def save_emulator(path: str, spec: Dict[str, Any], weights: Sequence[np.ndarray],
                  thresholds: Sequence[np.ndarray]) -> None:
    from .atomic import save_npz_atomic

    spec = dict(spec, format=FORMAT)
    arrays = {"spec": np.array(json.dumps(spec, sort_keys=True))}
    for layer, w, t in zip(spec["layers"], weights, thresholds):
        arrays[layer["name"] + ".weight"] = np.asarray(w, dtype=np.int8)
        arrays[layer["name"] + ".threshold"] = np.asarray(t, dtype=np.int64)
    save_npz_atomic(path, arrays, compressed=True)


def load_emulator(path: str) -> Emulator:
    try:
        with open_npz(path) as z:
            spec = loads_json(str(z["spec"]))
            if spec.get("format") != FORMAT:
                raise BnnError("%s: not an emulator weights file (format %r)" % (path, spec.get("format")))
            weights = [z[layer["name"] + ".weight"] for layer in spec["layers"]]
            thresholds = [z[layer["name"] + ".threshold"] for layer in spec["layers"]]
    except BnnError:
        raise
    except FileNotFoundError:
        raise BnnError("%s: emulator weights not found" % path) from None
    except Exception as e:  # zipfile/ValueError/KeyError for corrupt or foreign files
        raise BnnError("%s: cannot read emulator weights (%s)" % (path, e)) from None
    for layer, w in zip(spec["layers"], weights):
        if w.dtype != np.int8 or not _all_pm1(w):
            raise BnnError("%s: layer %s weights are not +-1 int8" % (path, layer["name"]))
    return Emulator(spec, weights, thresholds)
