"""Binary feature vectors packed as bits, and their on-disk cache.

Features are +1/-1. They are stored with ``np.packbits`` along the feature axis (bit 1 = +1,
bit 0 = -1, MSB first, the last byte zero-padded), so 6,149 images x 4,096 features take 3 MB
instead of 100 MB as float32. Code that needs +-1 numbers unpacks a block of rows at a time
with ``unpack_features(packed, width, rows=...)``.

Cache file (``.npz``, loaded with ``allow_pickle=False``), written atomically:

    format   str    "bnn-transfer/features"
    version  int64  1
    packed   uint8  (N, ceil(width / 8))   the features, as above
    labels   int64  (N,)                   class index per row (-1 where unknown)
    width    int64                         feature width D
    key      str    JSON object: what the features were computed from (image list
                    fingerprint, bundle/backbone sha256, backend, ...); a cache whose key
                    differs from the caller's is stale
    digest   str    sha256 of packed, labels and width: detects a corrupt or edited file
"""

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .atomic import save_npz_atomic
from .errors import BnnError
from .inputs import loads_json
from .npzfile import open_npz

FEATURES_FORMAT = "bnn-transfer/features"
FEATURES_VERSION = 1

__all__ = ["pack_features", "unpack_features", "packed_width", "Features", "FeatureStore"]

def packed_width(width):
    """Bytes per row of ``width`` packed features."""
    return (int(width) + 7) // 8


def pack_features(pm1):
    """Pack +1/-1 features along the last axis into uint8 bits (bit 1 = +1).

    Accepts any numeric array (int8, float32, ...) whose values are all -1 or +1; anything
    else raises BnnError, because a 0 would silently become -1.
    """
    x = np.asarray(pm1)
    if x.ndim == 0:
        raise BnnError("pack_features: need at least one dimension, got a scalar")
    pos = x == 1
    if not np.all(pos | (x == -1)):
        raise BnnError("pack_features: features must be -1 or +1 (found %r)"
                       % (x[~pos & (x != -1)].flat[0].item(),))
    return np.packbits(pos, axis=-1)


def unpack_features(packed, width, rows=None, dtype=np.float32, scale=1.0):
    """Unpack rows of packed features to +1/-1 (float32 unless ``dtype`` says otherwise).

    ``rows`` (a slice, an index array or None for all) selects rows before unpacking, so a
    training loop only ever holds one minibatch as floats. ``scale`` gives +-scale instead
    of +-1 at no extra cost (a head trains on features scaled by 1/sqrt(width)).
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise BnnError("unpack_features: expected packed uint8 (N, bytes), got %s %r" % (packed.dtype, packed.shape))
    width = int(width)
    if packed.shape[1] != packed_width(width):
        raise BnnError("unpack_features: %d bytes per row cannot hold %d features" % (packed.shape[1], width))
    block = packed if rows is None else packed[rows]
    out = np.unpackbits(block, axis=-1, count=width).astype(dtype)
    # in place: a few times faster than indexing a {-1, +1} table with the bits
    out *= out.dtype.type(2 * scale)
    out -= out.dtype.type(scale)
    return out


def _digest(packed, labels, width):
    h = hashlib.sha256()
    h.update(b"%d:%d:%d;" % (packed.shape[0], packed.shape[1], width))
    h.update(np.ascontiguousarray(packed).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _canonical_key(key):
    # sort_keys and a round trip through JSON, so that tuples/lists and key order compare equal
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


@dataclass(eq=False)  # holds arrays: == would be ambiguous
class Features:
    """Cached features: ``packed`` uint8 (N, ceil(width/8)), ``labels`` int64 (N,), the key."""

    packed: np.ndarray
    labels: np.ndarray
    width: int
    key: dict

    def __len__(self):
        return int(self.packed.shape[0])

    def unpack(self, rows=None):
        return unpack_features(self.packed, self.width, rows)


class FeatureStore:
    """Save and load the feature cache (see the module docstring for the file format)."""

    @staticmethod
    def save(path, packed, labels, width, key):
        """Write the cache atomically; ``key`` is a JSON-serialisable dict."""
        packed = np.asarray(packed)
        labels = np.asarray(labels)
        width = int(width)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_width(width):
            raise BnnError("%s: features must be packed uint8 (N, %d), got %s %r"
                           % (path, packed_width(width), packed.dtype, packed.shape))
        if labels.shape != (packed.shape[0],) or labels.dtype.kind not in "iu":
            raise BnnError("%s: labels must be integers of shape (%d,), got %s %r"
                           % (path, packed.shape[0], labels.dtype, labels.shape))
        if not isinstance(key, dict):
            raise BnnError("%s: cache key must be a dict, got %s" % (path, type(key).__name__))
        labels = labels.astype(np.int64)
        arrays = {
            "format": np.array(FEATURES_FORMAT),
            "version": np.array(FEATURES_VERSION, dtype=np.int64),
            "packed": packed,
            "labels": labels,
            "width": np.array(width, dtype=np.int64),
            "key": np.array(_canonical_key(key)),
            "digest": np.array(_digest(packed, labels, width)),
        }
        save_npz_atomic(path, arrays)

    @staticmethod
    def load(path, expect_key=None):
        """Read the cache. Returns None if there is none or its key differs from ``expect_key``.

        ``expect_key=None`` accepts any key. A file that exists but is not a valid cache
        (truncated, edited, another format) raises BnnError naming it.
        """
        if not os.path.isfile(path):
            return None
        try:
            with open_npz(path, max_bytes=None) as z:  # a cache may be large; the headers are still checked
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise BnnError("%s: not a readable feature cache (%s)" % (path, e)) from None
        fmt = data.get("format")
        if fmt is None or fmt.shape != () or str(fmt) != FEATURES_FORMAT:
            raise BnnError("%s: not a bnn-transfer feature cache" % path)
        missing = sorted({"version", "packed", "labels", "width", "key", "digest"} - set(data))
        if missing:
            raise BnnError("%s: feature cache lacks %s" % (path, ", ".join(missing)))
        if int(data["version"]) != FEATURES_VERSION:
            raise BnnError("%s: feature cache version %s, expected %d" % (path, data["version"], FEATURES_VERSION))
        try:
            key = loads_json(str(data["key"]))
        except ValueError:
            raise BnnError("%s: feature cache key is not JSON" % path) from None
        if expect_key is not None and _canonical_key(key) != _canonical_key(expect_key):
            return None
        packed, labels, width = data["packed"], data["labels"], int(data["width"])
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_width(width):
            raise BnnError("%s: packed features have shape %r %s, expected (N, %d) uint8"
                           % (path, packed.shape, packed.dtype, packed_width(width)))
        if labels.dtype != np.int64 or labels.shape != (packed.shape[0],):
            raise BnnError("%s: labels have shape %r %s, expected (%d,) int64"
                           % (path, labels.shape, labels.dtype, packed.shape[0]))
        if str(data["digest"]) != _digest(packed, labels, width):
            raise BnnError("%s: feature cache is corrupt (sha256 does not match)" % path)
        return Features(packed=packed, labels=labels, width=width, key=key)
