"""The software last layer: applied to the accelerator's binary features, trained on the board.

The backbone on the FPGA turns an image into D binary features (+1/-1); the head maps them to
C class scores. Three variants:

- ``float``  (paper variant b): softmax regression, ``logits = x @ W + b``.
- ``binary`` (paper variant a): binary weights with BatchNorm folded into a per-class affine,
  ``logits = (x @ Wb) * scale + bias``, Wb in {-1, +1}.
- ``mlp``    (the paper's future work): ``logits = relu(x @ W1 + b1) @ W2 + b2``.

Training (``fit_head``) is minibatch Adam in numpy with L2 and early stopping on a stratified
held-out split, deterministic for a seed. Features may be given packed (uint8 bits from
``host.features.pack_features``): they are unpacked one minibatch at a time, so training on
6,149 x 4,096 features holds 3 MB of bits, never the 100 MB float matrix.

Feature arguments everywhere in this module: a **uint8** array is packed bits (N, ceil(D/8));
any other dtype (int8, float32, ...) is +1/-1 values (N, D), or (D,) for one vector.

Head file (``.npz``, read with ``allow_pickle=False``; ``python -m export head`` writes the
same through ``save_head``)::

    format         str    "bnn-transfer/head"
    version        int64  1
    variant        str    "float" | "binary" | "mlp"
    classes        str    (C,)  class names, unique, non-empty
    feature_width  int64  D
    meta           str    JSON object (preprocessing, backbone sha256, training summary, ...)
    float:   W float32 (D, C), b float32 (C,)
    binary:  W int8 (D, C) of -1/+1, scale float32 (C,), bias float32 (C,)
    mlp:     W1 float32 (D, H), b1 float32 (H,), W2 float32 (H, C), b2 float32 (C,)

The logits are defined on raw +1/-1 features (no scaling); all arithmetic is float32.
"""

import json
import math
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .errors import BnnError
from .features import pack_features, packed_width, unpack_features
from .manifest import atomic_path
from .npzfile import open_npz
from .progress import progress_bar

HEAD_FORMAT = "bnn-transfer/head"
HEAD_VERSION = 1
VARIANTS = ("float", "binary", "mlp")

__all__ = ["Head", "HeadConfig", "fit_head", "evaluate", "predict_topk", "save_head", "load_head",
           "HEAD_FORMAT", "HEAD_VERSION", "VARIANTS"]

# name, dtype and shape (in the symbols D, C, H) of every parameter, per variant
_PARAMS = {
    "float": (("W", np.float32, "DC"), ("b", np.float32, "C")),
    "binary": (("W", np.int8, "DC"), ("scale", np.float32, "C"), ("bias", np.float32, "C")),
    "mlp": (("W1", np.float32, "DH"), ("b1", np.float32, "H"), ("W2", np.float32, "HC"), ("b2", np.float32, "C")),
}
_HEADER_KEYS = ("format", "version", "variant", "classes", "feature_width", "meta")


def _check_params(variant, n_classes, width, params, where, strict):
    """Validate ``params`` for ``variant``; return them as contiguous arrays of the file's dtypes.

    ``strict`` (loading a file) demands the exact dtypes; otherwise (building a Head from
    code, e.g. from torch tensors converted to float64) values are cast when that is lossless
    enough: floats to float32, and +-1 weights of the binary head to int8.
    """
    if variant not in _PARAMS:
        raise BnnError("%s: unknown head variant %r (expected one of %s)" % (where, variant, ", ".join(VARIANTS)))
    spec = _PARAMS[variant]
    names = [name for name, _, _ in spec]
    if set(params) != set(names):
        raise BnnError("%s: %s head needs parameters %s, got %s" % (where, variant, names, sorted(params)))
    dims = {"D": width, "C": n_classes}
    if variant == "mlp":
        b1 = np.asarray(params["b1"])
        dims["H"] = b1.shape[0] if b1.ndim == 1 else -1
    out = {}
    for name, dtype, sym in spec:
        a = np.asarray(params[name])
        want = tuple(dims[s] for s in sym)
        if a.shape != want or min(want) < 1:
            raise BnnError("%s: parameter %s has shape %r, expected %r" % (where, name, a.shape, want))
        if strict and a.dtype != dtype:
            raise BnnError("%s: parameter %s has dtype %s, expected %s" % (where, name, a.dtype, np.dtype(dtype)))
        if a.dtype.kind not in "iuf":
            raise BnnError("%s: parameter %s is not numeric (%s)" % (where, name, a.dtype))
        if dtype is np.int8:
            if not np.all((a == 1) | (a == -1)):
                raise BnnError("%s: binary weights %s must be -1 or +1" % (where, name))
        elif not np.all(np.isfinite(a)):
            raise BnnError("%s: parameter %s holds NaN or infinity" % (where, name))
        out[name] = np.ascontiguousarray(a, dtype=dtype)
    return out


def _check_classes(classes, where):
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise BnnError("%s: classes must be a list of strings" % where)
    classes = [str(c) for c in classes]
    if not classes or any(not c for c in classes):
        raise BnnError("%s: classes must be non-empty names (got %d)" % (where, len(classes)))
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise BnnError("%s: duplicate class names %s" % (where, dup[:5]))
    return classes


@dataclass(eq=False)  # parameters are arrays: compare heads field by field, not with ==
class Head:
    """A trained last layer: ``variant``, class names, feature width D, parameters, metadata.

    ``params`` holds the arrays of the variant (see the module docstring); ``meta`` is free
    JSON-serialisable metadata (preprocessing, backbone sha256, training summary).
    Constructing a Head validates and normalises everything; a bad head raises BnnError.
    """

    variant: str
    classes: List[str]
    feature_width: int
    params: Dict[str, np.ndarray]
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.classes = _check_classes(self.classes, "head")
        self.feature_width = int(self.feature_width)
        if self.feature_width < 1:
            raise BnnError("head: feature width must be positive, got %d" % self.feature_width)
        self.params = _check_params(self.variant, len(self.classes), self.feature_width, self.params,
                                    "head", strict=False)
        if not isinstance(self.meta, dict):
            raise BnnError("head: meta must be a dict, got %s" % type(self.meta).__name__)

    @property
    def num_classes(self):
        return len(self.classes)

    def _logits_block(self, x):
        """Logits of a float32 block of +-1 features (B, D)."""
        p = self.params
        if self.variant == "float":
            z = x @ p["W"]
            z += p["b"]
        elif self.variant == "binary":
            # float32 BLAS on +-1 is exact for D < 2**24, faster than an int8 matmul in numpy
            z = x @ p["W"].astype(np.float32)
            z *= p["scale"]
            z += p["bias"]
        else:
            h = x @ p["W1"]
            h += p["b1"]
            np.maximum(h, 0, out=h)
            z = h @ p["W2"]
            z += p["b2"]
        return z

    def logits(self, features, batch_size=1024):
        """Class scores (N, C) float32 for features (packed uint8 or +-1, see module docstring)."""
        single = np.ndim(features) == 1
        blocks = [self._logits_block(x) for x in _feature_blocks(features, self.feature_width, batch_size, "head")]
        z = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, self.num_classes), np.float32)
        return z[0] if single else z


def _as_2d(features, width, where):
    f = np.asarray(features)
    if f.ndim == 1:
        f = f[None, :]
    if f.ndim != 2:
        raise BnnError("%s: features must be 2-D (N, D), got shape %r" % (where, f.shape))
    expect = packed_width(width) if f.dtype == np.uint8 else width
    if f.shape[1] != expect:
        what = "packed bytes" if f.dtype == np.uint8 else "features"
        raise BnnError("%s: features have %d %s per row, the head expects %d (feature width %d)"
                       % (where, f.shape[1], what, expect, width))
    if f.dtype.kind not in "iuf":
        raise BnnError("%s: features must be numeric, got %s" % (where, f.dtype))
    return f


def _feature_blocks(features, width, batch_size, where):
    """Yield float32 +-1 blocks of at most ``batch_size`` rows: never the whole matrix at once."""
    f = _as_2d(features, width, where)
    for start in range(0, f.shape[0], max(1, int(batch_size))):
        rows = slice(start, start + batch_size)
        if f.dtype == np.uint8:
            yield unpack_features(f, width, rows)
        else:
            yield np.asarray(f[rows], dtype=np.float32)


def predict_topk(head, features, k=5, batch_size=1024):
    """Top-``k`` classes per row: (indices int64 (N, k), probabilities float32 (N, k)), best first."""
    k = max(1, min(int(k), head.num_classes))
    idx_out, prob_out = [], []
    for x in _feature_blocks(features, head.feature_width, batch_size, "predict"):
        p = _softmax(head._logits_block(x))
        idx = np.argpartition(-p, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(p, idx, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        idx_out.append(np.take_along_axis(idx, order, axis=1).astype(np.int64))
        prob_out.append(np.take_along_axis(part, order, axis=1))
    if not idx_out:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(idx_out), np.concatenate(prob_out)


def evaluate(head, features, labels, confusion=False, batch_size=1024):
    """Accuracy of ``head``: dict(n, top1, top5[, confusion]); top5 is top-min(5, C).

    ``confusion`` adds an int64 (C, C) matrix, rows = true class, columns = predicted.
    """
    labels = _check_labels(labels, head.num_classes, "evaluate")
    n = labels.shape[0]
    if np.ndim(features) != 2 or np.shape(features)[0] != n:
        raise BnnError("evaluate: %d labels for features of shape %r" % (n, np.shape(features)))
    k = min(5, head.num_classes)
    top, _ = predict_topk(head, features, k, batch_size)
    hit = top == labels[:, None]
    out = {
        "n": int(n),
        "top1": float(hit[:, 0].mean()) if n else float("nan"),
        "top5": float(hit.any(axis=1).mean()) if n else float("nan"),
    }
    if confusion:
        cm = np.zeros((head.num_classes, head.num_classes), np.int64)
        np.add.at(cm, (labels, top[:, 0]), 1)
        out["confusion"] = cm
    return out


# ---------------------------------------------------------------------------------------- file


def save_head(path, head):
    """Write ``head`` as an .npz (format in the module docstring), atomically."""
    if not isinstance(head, Head):
        raise BnnError("%s: save_head needs a Head, got %s" % (path, type(head).__name__))
    try:
        meta = json.dumps(head.meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise BnnError("%s: head meta is not JSON-serialisable (%s)" % (path, e)) from None
    params = _check_params(head.variant, head.num_classes, head.feature_width, head.params, str(path), strict=False)
    arrays = {
        "format": np.array(HEAD_FORMAT),
        "version": np.array(HEAD_VERSION, dtype=np.int64),
        "variant": np.array(head.variant),
        "classes": np.array(head.classes, dtype=np.str_),
        "feature_width": np.array(head.feature_width, dtype=np.int64),
        "meta": np.array(meta),
    }
    arrays.update(params)
    with atomic_path(path) as tmp:
        # a file object, because np.savez appends ".npz" to a name that lacks it
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def _scalar(data, key, kind, path):
    a = data[key]
    if a.shape != () or a.dtype.kind != kind:
        raise BnnError("%s: %r must be a scalar of kind %r, got %s %r" % (path, key, kind, a.dtype, a.shape))
    return a.item()


def load_head(path):
    """Read and validate a head file; any problem raises BnnError("<path>: ...")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BnnError("%s: head file not found" % path)
    try:
        with open_npz(path) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise BnnError("%s: not a readable head file (%s)" % (path, e)) from None
    if "format" not in data or data["format"].shape != () or str(data["format"]) != HEAD_FORMAT:
        raise BnnError("%s: not a bnn-transfer head file" % path)
    missing = [k for k in _HEADER_KEYS if k not in data]
    if missing:
        raise BnnError("%s: head file lacks %s" % (path, ", ".join(missing)))
    version = _scalar(data, "version", "i", path)
    if version != HEAD_VERSION:
        raise BnnError("%s: head file version %s, this code reads version %d" % (path, version, HEAD_VERSION))
    variant = _scalar(data, "variant", "U", path)
    width = _scalar(data, "feature_width", "i", path)
    classes = data["classes"]
    if classes.ndim != 1 or classes.dtype.kind != "U":
        raise BnnError("%s: classes must be a 1-D string array, got %s %r" % (path, classes.dtype, classes.shape))
    try:
        meta = json.loads(_scalar(data, "meta", "U", path))
    except ValueError:
        raise BnnError("%s: head meta is not valid JSON" % path) from None
    if not isinstance(meta, dict):
        raise BnnError("%s: head meta must be a JSON object" % path)
    if variant not in _PARAMS:
        raise BnnError("%s: unknown head variant %r (expected one of %s)" % (path, variant, ", ".join(VARIANTS)))
    if width < 1:
        raise BnnError("%s: feature width must be positive, got %d" % (path, width))
    classes = _check_classes(classes.tolist(), path)
    params = {k: v for k, v in data.items() if k not in _HEADER_KEYS}
    params = _check_params(variant, len(classes), width, params, path, strict=True)
    return Head(variant=variant, classes=classes, feature_width=width, params=params, meta=meta)


# ------------------------------------------------------------------------------------ training


@dataclass
class HeadConfig:
    """Hyperparameters of ``fit_head``.

    - ``lr``: Adam's step for features scaled by 1/sqrt(D) (the trainer scales internally and
      folds the factor into the saved weights), so one value suits any feature width.
    - ``weight_decay``: L2 penalty ``wd/2 * ||W||^2`` on the weight matrices (not on biases or
      scales), in that same scaled parametrisation.
    - ``batch_size``: None picks ``n_train // 8`` clipped to [32, 512]. Large batches are the
      fastest per epoch, but a small dataset needs several steps per epoch for a patience
      counted in epochs to mean anything.
    - ``val_fraction`` of each class is held out. Training stops after ``patience`` epochs
      without a better validation accuracy (ties: a loss lower by 0.01) and keeps the best
      epoch's head. With ``refit`` the head is then retrained from scratch on all rows for that
      many epochs, so no labelled row is left unused. 0 disables both: all ``epochs`` run.
    - ``calibrate``: rescale the final logits by one factor fitted on the validation rows
      (temperature scaling, Guo et al. 2017). Early stopping leaves the head under-confident;
      this makes its probabilities mean something without changing any prediction.
    - ``hidden``: width of the mlp's hidden layer.
    """

    variant: str = "float"
    epochs: int = 60
    batch_size: Optional[int] = None
    lr: float = 1e-2
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    hidden: int = 256
    refit: bool = False
    calibrate: bool = True


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _check_labels(labels, n_classes, where):
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise BnnError("%s: labels must be a 1-D integer array, got %s %r" % (where, y.dtype, y.shape))
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise BnnError("%s: labels must lie in [0, %d), found %d..%d" % (where, n_classes, y.min(), y.max()))
    return y


def _stratified_split(y, fraction, rng):
    """Indices (train, val): ``fraction`` of each class held out, at least one row kept for training."""
    if fraction <= 0:
        return np.arange(y.shape[0]), np.zeros(0, np.int64)
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        n_val = min(rows.size - 1, int(round(fraction * rows.size)))
        if n_val > 0:
            val.append(rng.permutation(rows)[:n_val])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(y.shape[0]), val, assume_unique=True)
    return train, val


class _Adam:
    """Adam (Kingma & Ba) over a dict of float32 arrays, updated in place.

    One scratch array per parameter: a step allocates nothing, which keeps the board's small
    RAM steady and saves time on the 400k-weight float head.
    """

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, np.float32(eps)
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        step = np.float32(self.lr * math.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t))
        for k, g in grads.items():
            m, v, tmp = self.m[k], self.v[k], self.tmp[k]
            np.subtract(g, m, out=tmp)  # m += (1 - beta1) * (g - m)
            tmp *= np.float32(1 - self.beta1)
            m += tmp
            np.multiply(g, g, out=tmp)  # v += (1 - beta2) * (g * g - v)
            tmp -= v
            tmp *= np.float32(1 - self.beta2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step
            params[k] -= tmp


class _Model:
    """A head in the training parametrisation: inputs scaled by 1/sqrt(D), latent binary weights."""

    def __init__(self, variant, width, n_classes, hidden, rng):
        self.variant = variant
        self.decay = {"float": ("W",), "binary": ("W",), "mlp": ("W1", "W2")}[variant]
        f32 = np.float32
        if variant == "float":
            # zero start: softmax regression is convex, and zeros keep runs comparable across seeds
            self.p = {"W": np.zeros((width, n_classes), f32), "b": np.zeros(n_classes, f32)}
        elif variant == "binary":
            # Small latent weights, so that signs follow the first gradients; x_s @ sign(W) then
            # has unit variance per class, which a scale of 1 starts from.
            self.p = {"W": rng.uniform(-1e-3, 1e-3, (width, n_classes)).astype(f32),
                      "scale": np.ones(n_classes, f32), "bias": np.zeros(n_classes, f32)}
        else:
            # scaled inputs have unit norm, so N(0, 1) first-layer weights give unit-variance units
            self.p = {"W1": rng.standard_normal((width, hidden)).astype(f32), "b1": np.zeros(hidden, f32),
                      "W2": (rng.standard_normal((hidden, n_classes)) * math.sqrt(2.0 / hidden)).astype(f32),
                      "b2": np.zeros(n_classes, f32)}

    def forward(self, x):
        p = self.p
        if self.variant == "float":
            return x @ p["W"] + p["b"], None
        if self.variant == "binary":
            wb = np.where(p["W"] >= 0, np.float32(1), np.float32(-1))
            a = x @ wb
            return a * p["scale"] + p["bias"], (wb, a)
        h = x @ p["W1"] + p["b1"]
        np.maximum(h, 0, out=h)
        return h @ p["W2"] + p["b2"], h

    def grads(self, x, g, cache, wd):
        """Gradients of the mean loss, given dL/dlogits ``g`` (already divided by the batch)."""
        p = self.p
        if self.variant == "float":
            out = {"W": x.T @ g, "b": g.sum(axis=0)}
        elif self.variant == "binary":
            wb, a = cache
            out = {"scale": (g * a).sum(axis=0), "bias": g.sum(axis=0)}
            # straight-through estimator (Courbariaux et al.): the gradient w.r.t. sign(W) passes
            # to the latent W unchanged where |W| <= 1 and is cancelled where the latent saturated
            gw = x.T @ (g * p["scale"])
            gw[np.abs(p["W"]) > 1] = 0
            out["W"] = gw
        else:
            h = cache
            gh = g @ p["W2"].T
            gh[h <= 0] = 0
            out = {"W2": h.T @ g, "b2": g.sum(axis=0), "W1": x.T @ gh, "b1": gh.sum(axis=0)}
        for k in self.decay:
            out[k] += np.float32(wd) * p[k]
        return out

    def after_step(self):
        if self.variant == "binary":
            # keep latent weights in [-1, 1], where the straight-through gradient is alive
            np.clip(self.p["W"], -1, 1, out=self.p["W"])

    def scale_logits(self, factor):
        """Multiply the logits by ``factor`` (> 0) by rescaling the last affine layer."""
        f = np.float32(factor)
        last = {"float": ("W", "b"), "binary": ("scale", "bias"), "mlp": ("W2", "b2")}[self.variant]
        for k in last:
            self.p[k] *= f

    def to_head(self, classes, width, meta):
        s = np.float32(1.0 / math.sqrt(width))
        p = self.p
        if self.variant == "float":
            params = {"W": p["W"] * s, "b": p["b"].copy()}
        elif self.variant == "binary":
            params = {"W": np.where(p["W"] >= 0, 1, -1).astype(np.int8), "scale": p["scale"] * s,
                      "bias": p["bias"].copy()}
        else:
            params = {"W1": p["W1"] * s, "b1": p["b1"].copy(), "W2": p["W2"].copy(), "b2": p["b2"].copy()}
        return Head(variant=self.variant, classes=list(classes), feature_width=width, params=params, meta=meta)


def _loss_and_grad(z, y):
    """Mean cross-entropy of logits ``z`` (B, C) and its gradient w.r.t. ``z``."""
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(y.shape[0])
    loss = float(np.mean(lse - z[rows, y]))
    g = np.exp(z - lse[:, None])
    g[rows, y] -= 1
    g /= np.float32(y.shape[0])
    return loss, g


def fit_head(features, labels, classes, cfg=None, progress=True, feature_width=None, meta=None):
    """Train a head on binary features; returns ``(Head, history)``.

    ``features``: packed uint8 bits (N, ceil(D/8)) with ``feature_width`` = D (default 8 x
    bytes), or +1/-1 values (N, D) (packed once here, so the float matrix can be freed).
    ``labels``: ints in [0, len(classes)). ``history``: one dict per epoch (epoch, train_loss,
    val_loss, val_top1, seconds). The returned head's ``meta`` is ``meta`` plus a ``"train"``
    entry with the configuration, the best epoch and its validation accuracy.
    Deterministic for ``cfg.seed`` on a given machine and BLAS.
    """
    cfg = cfg if cfg is not None else HeadConfig()
    if cfg.variant not in VARIANTS:
        raise BnnError("fit: unknown head variant %r (expected one of %s)" % (cfg.variant, ", ".join(VARIANTS)))
    if cfg.epochs < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or not cfg.lr > 0 or cfg.hidden < 1:
        raise BnnError("fit: epochs, batch_size, lr and hidden must be positive (%r)" % (cfg,))
    if not 0 <= cfg.val_fraction < 1:
        raise BnnError("fit: val_fraction must be in [0, 1), got %r" % (cfg.val_fraction,))
    classes = _check_classes(list(classes), "fit")
    f = np.asarray(features)
    if f.ndim != 2:
        raise BnnError("fit: features must be 2-D (N, D), got shape %r" % (f.shape,))
    if f.dtype == np.uint8:
        width = int(feature_width) if feature_width is not None else 8 * f.shape[1]
        if width < 1 or packed_width(width) != f.shape[1]:
            raise BnnError("fit: %d packed bytes per row cannot hold %d features" % (f.shape[1], width))
        packed = f
    else:
        width = f.shape[1]
        if feature_width is not None and int(feature_width) != width:
            raise BnnError("fit: features have width %d, feature_width says %d" % (width, feature_width))
        packed = np.concatenate([pack_features(f[i:i + 4096]) for i in range(0, f.shape[0], 4096)]) \
            if f.shape[0] else np.zeros((0, packed_width(width)), np.uint8)
    y = _check_labels(labels, len(classes), "fit")
    if y.shape[0] != packed.shape[0]:
        raise BnnError("fit: %d labels for %d feature rows" % (y.shape[0], packed.shape[0]))
    if y.shape[0] == 0:
        raise BnnError("fit: no training rows")

    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = _stratified_split(y, cfg.val_fraction, rng)
    batch_size = int(cfg.batch_size) if cfg.batch_size else min(512, max(32, train_idx.size // 8))
    scale = 1.0 / math.sqrt(width)
    model = _Model(cfg.variant, width, len(classes), cfg.hidden, rng)
    history, best, best_epoch = [], None, 0

    def run_epochs(model, rows, epochs, val_rows, desc):
        nonlocal best, best_epoch
        opt = _Adam(model.p, cfg.lr)
        best_score, stale = None, 0
        bar = progress_bar(epochs, desc, progress, iterable=range(1, epochs + 1))
        for epoch in bar:
            t0 = time.perf_counter()
            order = rng.permutation(rows)
            total = 0.0
            for start in range(0, order.size, batch_size):
                # sorted rows make the gather from the packed matrix sequential
                idx = np.sort(order[start:start + batch_size])
                x = unpack_features(packed, width, idx, scale=scale)
                z, cache = model.forward(x)
                loss, g = _loss_and_grad(z, y[idx])
                total += loss * idx.size
                opt.step(model.p, model.grads(x, g, cache, cfg.weight_decay))
                model.after_step()
            rec = {"phase": desc, "epoch": epoch, "train_loss": total / max(1, order.size)}
            if val_rows.size:
                rec["val_loss"], rec["val_top1"] = _val_metrics(model, packed, width, y, val_rows, scale,
                                                                 batch_size)
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            if hasattr(bar, "set_postfix"):
                # refresh=False: tqdm syncs its counter only when it redraws on its own
                bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k in ("train_loss", "val_top1")},
                                refresh=False)
            if not val_rows.size:
                continue
            # Accuracy first: the loss keeps falling long after accuracy has peaked (the head
            # only grows more confident), so stopping on the loss alone overfits. A clearly
            # lower loss breaks ties, frequent on small validation sets; the margin lets a
            # run that is already perfect on them stop.
            acc, loss = rec["val_top1"], rec["val_loss"]
            if best_score is None or acc > best_score[0] or (acc == best_score[0] and loss < best_score[1] - 1e-2):
                best_score, stale = (acc, loss), 0
                best = {k: v.copy() for k, v in model.p.items()}
                best_epoch = epoch
            else:
                stale += 1
                if stale >= cfg.patience:
                    break

    run_epochs(model, train_idx, cfg.epochs, val_idx, "fit")
    if best is not None:
        model.p = best
    else:
        best_epoch = len(history)
    best_rec = history[best_epoch - 1]
    temperature = 1.0
    if cfg.calibrate and val_idx.size:
        z = np.concatenate([model.forward(unpack_features(packed, width, val_idx[i:i + batch_size], scale=scale))[0]
                            for i in range(0, val_idx.size, batch_size)])
        temperature = 1.0 / _fit_inverse_temperature(z, y[val_idx])
    if cfg.refit and val_idx.size:
        model = _Model(cfg.variant, width, len(classes), cfg.hidden, np.random.default_rng(cfg.seed))
        run_epochs(model, np.arange(y.shape[0]), best_epoch, np.zeros(0, np.int64), "refit")
    # a refit head trained for as many epochs has about the same logit scale: same temperature
    model.scale_logits(1.0 / temperature)
    info = {"config": asdict(cfg), "best_epoch": best_epoch, "epochs_run": len(history),
            "n_train": int(train_idx.size), "n_val": int(val_idx.size), "batch_size": batch_size,
            "temperature": temperature}
    if "val_top1" in best_rec:
        info["val_top1"] = best_rec["val_top1"]
        info["val_loss"] = best_rec["val_loss"]
    head_meta = dict(meta or {})
    head_meta["train"] = info
    return model.to_head(classes, width, head_meta), history


def _fit_inverse_temperature(z, y, iters=50, lo=1e-2, hi=1e4):
    """The factor b in [lo, hi] minimising the mean cross-entropy of ``b * z``: 1-D Newton.

    The loss is convex in b. The bounds matter where the optimum degenerates: a head with no
    signal on the validation rows wants b -> 0 (uniform probabilities), which would erase its
    weights; separable validation rows want b -> infinity.
    """
    z = z.astype(np.float64)
    zy = z[np.arange(y.shape[0]), y]
    b = 1.0
    for _ in range(iters):
        bz = b * z
        bz -= bz.max(axis=1, keepdims=True)
        p = np.exp(bz)
        p /= p.sum(axis=1, keepdims=True)
        ez = (p * z).sum(axis=1)
        grad = float(np.mean(ez - zy))
        hess = float(np.mean((p * z * z).sum(axis=1) - ez * ez))
        if hess <= 1e-12:
            break  # flat: e.g. a single class or constant logits
        new = b - grad / hess
        # Newton may overshoot to b <= 0 where the loss is still convex but b is meaningless
        new = min(max(new, b / 10, lo), b * 10, hi)
        if abs(new - b) <= 1e-7 * b:
            b = new
            break
        b = new
    return b


def _val_metrics(model, packed, width, y, rows, scale, batch_size):
    """Mean loss and top-1 accuracy on ``rows``, unpacking ``batch_size`` rows at a time."""
    loss, correct = 0.0, 0
    for start in range(0, rows.size, batch_size):
        idx = rows[start:start + batch_size]
        z, _ = model.forward(unpack_features(packed, width, idx, scale=scale))
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss += float(np.sum(lse - z[np.arange(idx.size), y[idx]]))
        correct += int(np.sum(z.argmax(axis=1) == y[idx]))
    return loss / rows.size, correct / rows.size
