"""A bit-exact numpy emulator of the accelerator, from the bundle's emulator weights.

Every frozen layer computes ``out = +1 if acc >= T else -1`` with ``acc = sum(w * x)``, w in
{-1, +1}, x the uint8 image (first layer) or the previous +-1 map. Images are NHWC, as FINN's
accelerator takes them; convolutions are im2col + one matrix product. The matrix product runs in
float32 BLAS: every partial sum is an integer far below 2**24, so it is exact, and BLAS is much
faster than popcounts in numpy.

File format (``emulator.npz``, no pickle):
  spec                JSON string: {"format", "input": {"shape": [H, W, C], "datatype": "UINT8"},
                      "layers": [{"name", "kind": "conv"|"fc", "kernel", "stride", "padding",
                      "pad_value", "pool": [k, s] or null, "in_shape", "out_shape"}]}
  <name>.weight       int8 +-1, (out, fan_in); conv columns in (kh, kw, c) order, the first FC
                      after the convs in (h, w, c) order (NHWC flattening)
  <name>.threshold    int64, (out,)
"""

import json

import numpy as np

from .errors import BnnError

FORMAT = "bnn-transfer/emulator/v1"


def _windows(x, k, s):
    """(N, OH, OW, k, k, C) strided view of NHWC ``x`` (no copy)."""
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    sn, sh, sw, sc = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, k, k, c), strides=(sn, sh * s, sw * s, sh, sw, sc), writeable=False
    )


def max_pool(x, k, s):
    win = _windows(x, k, s)
    return win.max(axis=(3, 4))


class Emulator:
    """``extract(images_nhwc_uint8) -> (N, D) int8 +-1 features``."""

    def __init__(self, spec, weights, thresholds):
        self.spec = spec
        self.layers = spec["layers"]
        self.input_shape = tuple(spec["input"]["shape"])
        self.w = [np.ascontiguousarray(w, dtype=np.float32).T for w in weights]  # (fan_in, out)
        self.t = [np.asarray(t, dtype=np.float32) for t in thresholds]
        for layer, w, t in zip(self.layers, self.w, self.t):
            if w.shape[1] != t.shape[0]:
                raise BnnError("emulator layer %s: %d thresholds for %d outputs"
                               % (layer["name"], t.shape[0], w.shape[1]))

    @property
    def feature_width(self):
        return int(self.w[-1].shape[1])

    def layer_outputs(self, images):
        """Every layer's +-1 output (NHWC for convs), for divergence reports."""
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.dtype != np.uint8:
            raise BnnError("emulator expects uint8 images of shape (N, %d, %d, %d), got %s %s"
                           % (self.input_shape + (x.dtype, x.shape)))
        x = x.astype(np.float32)
        outs = []
        for layer, w, t in zip(self.layers, self.w, self.t):
            if layer["kind"] == "conv":
                p = layer["padding"]
                if p:
                    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=layer["pad_value"])
                k = layer["kernel"]
                win = _windows(np.ascontiguousarray(x), k, layer["stride"])
                n, oh, ow = win.shape[:3]
                acc = win.reshape(n * oh * ow, -1) @ w
                y = np.where(acc >= t, np.float32(1), np.float32(-1)).reshape(n, oh, ow, -1)
                if layer.get("pool"):
                    y = max_pool(y, *layer["pool"])
            else:
                acc = x.reshape(x.shape[0], -1) @ w
                y = np.where(acc >= t, np.float32(1), np.float32(-1))
            outs.append(y)
            x = y
        return outs

    def extract(self, images, batch_size=64):
        images = np.asarray(images)
        out = np.empty((images.shape[0], self.feature_width), dtype=np.int8)
        for i in range(0, images.shape[0], batch_size):
            out[i: i + batch_size] = self.layer_outputs(images[i: i + batch_size])[-1].reshape(-1, self.feature_width)
        return out


def save_emulator(path, spec, weights, thresholds):
    from .manifest import atomic_path

    spec = dict(spec, format=FORMAT)
    arrays = {"spec": np.array(json.dumps(spec, sort_keys=True))}
    for layer, w, t in zip(spec["layers"], weights, thresholds):
        arrays[layer["name"] + ".weight"] = np.asarray(w, dtype=np.int8)
        arrays[layer["name"] + ".threshold"] = np.asarray(t, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_emulator(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            spec = json.loads(str(z["spec"]))
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
        if w.dtype != np.int8 or not np.all(np.abs(w) == 1):
            raise BnnError("%s: layer %s weights are not +-1 int8" % (path, layer["name"]))
    return Emulator(spec, weights, thresholds)
