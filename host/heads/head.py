"""A trained last layer (``Head``) and inference with it: logits, top-k, accuracy.

The variants and their parameters are listed in ``host/heads/__init__.py``. Feature arguments
everywhere: a **uint8** array is packed bits (N, ceil(D/8)); any other dtype (int8, float32, ...)
is +1/-1 values (N, D), or (D,) for one vector. The logits are defined on raw +1/-1 features (no
scaling); all arithmetic is float32.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from ..errors import BnnError
from ..features import packed_width, unpack_features

VARIANTS = ("float", "binary", "mlp")

# name, dtype and shape (in the symbols D, C, H) of every parameter, per variant
_PARAMS = {
    "float": (("W", np.float32, "DC"), ("b", np.float32, "C")),
    "binary": (("W", np.int8, "DC"), ("scale", np.float32, "C"), ("bias", np.float32, "C")),
    "mlp": (("W1", np.float32, "DH"), ("b1", np.float32, "H"), ("W2", np.float32, "HC"), ("b2", np.float32, "C")),
}


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
    bound = _logit_bound(variant, out)
    if not bound <= LOGIT_LIMIT:
        raise BnnError("%s: weights so large that a logit can reach %.3g, beyond float32's safe range (%.0e): "
                       "its probabilities would be NaN" % (where, bound, LOGIT_LIMIT))
    return out


# Features are in [-1, 1], so no partial sum of a logit exceeds this bound of its magnitude: kept far below
# float32's 3.4e38, the matmuls and the softmax cannot overflow.
LOGIT_LIMIT = 1e30


def _logit_bound(variant, p):
    """The largest |logit| a head's parameters can produce on features in [-1, 1] (float64)."""
    a = {k: np.abs(v.astype(np.float64)) for k, v in p.items()}
    if variant == "float":
        z = a["W"].sum(axis=0) + a["b"]
    elif variant == "binary":
        z = a["W"].shape[0] * a["scale"] + a["bias"]
    else:
        h = a["W1"].sum(axis=0) + a["b1"]
        z = h @ a["W2"] + a["b2"]
    return float(z.max())


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
