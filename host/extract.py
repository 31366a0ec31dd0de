"""A dataset's binary features through a backend, cached on disk as packed bits.

``extract_dataset(bundle, backend, dataset)`` decodes every image, applies the bundle's evaluation
preprocessing (resize, pad, center crop), runs the backend in batches and returns the packed
features of the readable images. Unreadable images are skipped, counted and reported in one
warning line. With a ``cache_dir`` the result is stored as a ``host.features`` cache, so a second
``fit`` or ``eval`` on the same data reads 1 bit per feature instead of decoding every image again.

The cache key is the bundle's digest (sha256 of its manifest, which covers every weight), the
dataset's fingerprint (image list and labels) and the preprocessing. The backend is not part of
it: pynq, emulator and onnx agree bit for bit. The image *contents* are not hashed either
(hashing a JPEG costs about as much as decoding it): after editing images in place, pass
``--no-cache`` or delete the cache. The cache holds one row per dataset image; an unreadable
image is stored as a zero row with label -1 (``host.features``' "unknown").
"""

import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .errors import BnnError, ImageError
from .features import Features, FeatureStore, pack_features, packed_width
from .preprocess import Preprocess, eval_transform
from .progress import progress_bar

__all__ = ["DatasetFeatures", "cache_key", "cache_path", "extract_dataset", "skipped_warning"]

EXTRACT_VERSION = 1  # bump when what a cached row means changes


@dataclass(eq=False)
class DatasetFeatures(Features):
    """Features of the readable images of a dataset, row k belonging to image ``indices[k]``.

    ``skipped`` lists (index, reason) of the unreadable images; ``total`` is the dataset's size.
    ``cached`` says whether the rows came from the cache (then ``backend`` is None and the
    timings are those of reading it); ``backend_seconds`` is the time spent inside the backend.
    """

    indices: np.ndarray = None
    skipped: List[Tuple[int, str]] = field(default_factory=list)
    total: int = 0
    cached: bool = False
    cache_path: Optional[str] = None
    backend: Optional[str] = None
    seconds: float = 0.0
    backend_seconds: float = 0.0

    @property
    def images_per_s(self):
        """Images per second of the whole extraction (decode, preprocess, backend); None if cached."""
        if self.cached or self.seconds <= 0:
            return None
        return len(self) / self.seconds


def cache_key(bundle, dataset):
    """What the features of ``dataset`` through ``bundle`` depend on (a JSON-serialisable dict)."""
    return {
        "format": "bnn-transfer/extract",
        "version": EXTRACT_VERSION,
        "bundle_digest": bundle.digest,
        "feature_width": int(bundle.feature_width),
        "preprocess": dict(bundle.preprocess),
        "transform": "eval",
        "dataset": dataset.fingerprint(),
    }


def cache_path(cache_dir, bundle, dataset):
    """``<cache_dir>/<dataset>-<split>-<key hash>.features.npz``: caches of several bundles coexist."""
    key = json.dumps(cache_key(bundle, dataset), sort_keys=True).encode("utf-8")
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(dataset.name))
    return os.path.join(os.fspath(cache_dir), "%s-%s-%s.features.npz"
                        % (name, dataset.split, hashlib.sha256(key).hexdigest()[:16]))


def skipped_warning(skipped, total):
    """The one warning line about unreadable images ('' when there are none)."""
    if not skipped:
        return ""
    return "warning: skipped %d unreadable images of %d (first: %s)" % (len(skipped), total, skipped[0][1])


def _decode(dataset, i, pp):
    try:
        return eval_transform(dataset.load(i), pp), None
    except ImageError as e:
        return None, str(e)


def _decoded_batches(dataset, pp, batch_size, workers):
    """Yield (indices, images NHWC uint8, [(index, reason)]) per batch of ``batch_size`` images.

    With threads the next batch decodes while the caller runs the backend on this one; PIL
    releases the GIL while decoding and resizing, so that overlaps on a 2-core board too.
    """
    n = len(dataset)
    starts = range(0, n, batch_size)

    def collect(indices, results):
        ok, imgs, bad = [], [], []
        for i, (img, reason) in zip(indices, results):
            if img is None:
                bad.append((i, reason))
            else:
                ok.append(i)
                imgs.append(img)
        x = np.stack(imgs) if imgs else np.zeros((0, pp.input_size, pp.input_size, 3), np.uint8)
        return np.asarray(ok, dtype=np.int64), x, bad

    if workers <= 1:
        for s in starts:
            idx = range(s, min(n, s + batch_size))
            yield collect(idx, [_decode(dataset, i, pp) for i in idx])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        queue = deque()
        for s in starts:
            idx = range(s, min(n, s + batch_size))
            queue.append((idx, [ex.submit(_decode, dataset, i, pp) for i in idx]))
            if len(queue) > 1:  # one batch in flight ahead of the one handed out: bounded memory
                idx0, futs = queue.popleft()
                yield collect(idx0, [f.result() for f in futs])
        while queue:
            idx0, futs = queue.popleft()
            yield collect(idx0, [f.result() for f in futs])


def _from_cache(path, key, bundle, dataset):
    """The cached rows, or None when there is no usable cache (a broken one is reported)."""
    try:
        f = FeatureStore.load(path, expect_key=key)
    except BnnError as e:
        print("warning: %s; recomputing the features" % e, file=sys.stderr)
        return None
    if f is None:
        return None
    if f.width != bundle.feature_width or len(f) != len(dataset):
        print("warning: %s: holds %d rows of %d features, expected %d of %d; recomputing the features"
              % (path, len(f), f.width, len(dataset), bundle.feature_width), file=sys.stderr)
        return None
    return f


def extract_dataset(bundle, backend, dataset, batch_size=64, cache_dir=None, progress=True, workers=None,
                    backend_options=None):
    """Binary features of every readable image of ``dataset``: a ``DatasetFeatures``.

    ``backend`` is a ``host.backends.Backend`` or a backend name; a name is only turned into a
    backend (and closed again) when the cache misses, so a cached run never loads the overlay.
    ``cache_dir`` None disables the cache. ``workers`` decoding threads (default: up to 4).
    Raises BnnError when no image can be read.
    """
    t0 = time.perf_counter()
    pp = Preprocess.from_dict(bundle.preprocess, where=bundle.root)
    n, width = len(dataset), int(bundle.feature_width)
    where = "%s/%s" % (dataset.name, dataset.split)
    if n == 0:
        raise BnnError("%s: the dataset has no images" % where)
    key = cache_key(bundle, dataset)
    path = cache_path(cache_dir, bundle, dataset) if cache_dir is not None else None

    cached = _from_cache(path, key, bundle, dataset) if path is not None else None
    if cached is not None:
        readable = cached.labels >= 0
        skipped = [(int(i), "%s: unreadable when the features were cached" % dataset.source(int(i)))
                   for i in np.flatnonzero(~readable)]
        out = DatasetFeatures(packed=cached.packed[readable], labels=cached.labels[readable], width=width, key=key,
                              indices=np.flatnonzero(readable).astype(np.int64), skipped=skipped, total=n,
                              cached=True, cache_path=path, seconds=time.perf_counter() - t0)
    else:
        out = _compute(bundle, backend, dataset, pp, batch_size, progress, workers, backend_options, key)
        out.seconds = time.perf_counter() - t0
        if path is not None:
            labels = np.full(n, -1, np.int64)
            labels[out.indices] = out.labels
            packed = np.zeros((n, packed_width(width)), np.uint8)
            packed[out.indices] = out.packed
            try:
                FeatureStore.save(path, packed, labels, width, key)
                out.cache_path = path
            except OSError as e:
                # the cache only saves time: a read-only or full disk must not cost the result
                print("warning: %s: cannot write the feature cache (%s); continuing without it"
                      % (path, e.strerror or e), file=sys.stderr)
    if out.skipped:
        print(skipped_warning(out.skipped, n), file=sys.stderr)
    return out


def _compute(bundle, backend, dataset, pp, batch_size, progress, workers, backend_options, key):
    n, width = len(dataset), int(bundle.feature_width)
    owned = isinstance(backend, str)
    if owned:
        from .backends import make_backend

        backend = make_backend(backend, bundle, **(backend_options or {}))
    bs = int(batch_size) if batch_size is not None else int(backend.default_batch_size)
    if bs < 1:
        raise BnnError("batch_size: expected a positive integer, got %r" % (batch_size,))
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    packed = np.zeros((n, packed_width(width)), np.uint8)
    keep = np.zeros(n, bool)
    skipped = []
    backend_seconds = 0.0
    bar = progress_bar(n, "features %s/%s" % (dataset.name, dataset.split), progress, unit="img")
    try:
        for idx, x, bad in _decoded_batches(dataset, pp, bs, workers):
            skipped.extend(bad)
            if idx.size:
                t = time.perf_counter()
                feats = backend.extract(x, batch_size=bs)
                backend_seconds += time.perf_counter() - t
                packed[idx] = pack_features(feats)
                keep[idx] = True
            if bar is not None:
                bar.update(len(idx) + len(bad))
    finally:
        if bar is not None:
            bar.close()
        if owned:
            backend.close()
    if not keep.any():
        raise BnnError("%s/%s: none of the %d images could be read (first: %s)"
                       % (dataset.name, dataset.split, n, skipped[0][1]))
    indices = np.flatnonzero(keep).astype(np.int64)
    return DatasetFeatures(packed=packed[indices], labels=np.asarray(dataset.labels, np.int64)[indices], width=width,
                           key=key, indices=indices, skipped=skipped, total=n, cached=False,
                           backend=backend.name, backend_seconds=backend_seconds)
