"""Decoded-image cache: decode and resize every image of a dataset once, then memory-map it.

For a dataset and a ``resize_longest`` L the cache holds ``pixels`` (N x L x L x 3 uint8, each
image at the top-left of its slot) and ``sizes`` (N x 2, the (h, w) of each image; (0, 0) for an
unreadable one), both plain ``.npy`` files read with ``mmap_mode="r"``, plus an index JSON that
records the dataset fingerprint, L and the unreadable images with their reason. The index is
written last, so a cache is either complete or absent. A cache whose fingerprint, L or files do
not match is rebuilt.

Files are named ``<name>-<split>-<key>-L<L>-<fingerprint>.*`` where ``key`` hashes the dataset
root and options: different datasets coexist in one cache directory, and a rebuilt cache
replaces (and deletes) its stale predecessor.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np

from bnn_transfer.host.atomic import atomic_path, write_json_atomic
from bnn_transfer.host.errors import BnnError, ImageError
from bnn_transfer.host.preprocess import resize_longest_side
from bnn_transfer.host.progress import progress_bar

CACHE_FORMAT = "bnn-transfer/imagecache/v1"
_CHUNK = 256  # images in flight at once: bounds the memory of the thread pool's results


def cache_base(dataset, resize_longest):
    """The file-name stem of a dataset's cache (without the fingerprint)."""
    ident = json.dumps({"root": dataset.root, "options": dataset.options}, sort_keys=True, default=str)
    key = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return "%s-%s-%s-L%d" % (dataset.name, dataset.split, key, int(resize_longest))


class ImageCache:
    """The resized images of ``dataset`` at ``resize_longest``, built on first use under ``cache_dir``.

    ``get(i)`` returns a read-only HWC view; ``valid_indices()`` the readable images; ``bad`` maps
    the index of each unreadable image to its reason. ``rebuilt`` tells whether this call built it.
    """

    def __init__(self, dataset, resize_longest, cache_dir, workers=None, progress=True, quiet=False):
        if isinstance(resize_longest, bool) or not isinstance(resize_longest, (int, np.integer)) or resize_longest < 1:
            raise BnnError("imagecache: resize_longest must be a positive integer, got %r" % (resize_longest,))
        self.dataset = dataset
        self.resize_longest = int(resize_longest)
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.base = cache_base(dataset, self.resize_longest)
        self.index_path = os.path.join(self.cache_dir, self.base + ".json")
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        self.rebuilt = False
        info = self._load_index()
        if info is None:
            info = self._build(progress)
            self.rebuilt = True
        self._info = info
        self.pixels_path = os.path.join(self.cache_dir, info["pixels"])
        self.sizes_path = os.path.join(self.cache_dir, info["sizes"])
        self.bad = {int(i): reason for i, reason in info["bad"]}
        self._sizes = np.load(self.sizes_path, allow_pickle=False)
        self._pixels = None
        if self.bad and not quiet:
            print(self.warning(), file=sys.stderr)

    # -- reading -------------------------------------------------------------------------------------

    def __len__(self):
        return int(self._sizes.shape[0])

    def __getstate__(self):
        # A memmap must not travel to DataLoader workers (it would pickle as a full copy); reopen there.
        state = dict(self.__dict__)
        state["_pixels"] = None
        return state

    def _pixel_array(self):
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r", allow_pickle=False)
        return self._pixels

    def get(self, i):
        """Image ``i`` resized so that its longest side is ``resize_longest`` (HWC uint8, read-only)."""
        i = int(i)
        if i in self.bad:
            raise ImageError(self.bad[i])
        h, w = (int(x) for x in self._sizes[i])
        return self._pixel_array()[i, :h, :w]

    def is_valid(self, i):
        return int(i) not in self.bad

    def valid_indices(self):
        return np.flatnonzero(self._sizes[:, 0] > 0).astype(np.int64)

    def warning(self):
        """One line about the unreadable images ('' when there are none)."""
        if not self.bad:
            return ""
        first = min(self.bad)
        return "warning: skipped %d unreadable images of %d (first: %s)" % (len(self.bad), len(self), self.bad[first])

    def describe(self):
        return {"path": self.index_path, "resize_longest": self.resize_longest, "count": len(self),
                "unreadable": len(self.bad), "fingerprint": self._info["fingerprint"]}

    # -- building ------------------------------------------------------------------------------------

    def _stale(self, why):
        print("imagecache: %s: %s, rebuilding" % (self.index_path, why), file=sys.stderr)
        return None

    def _load_index(self):
        if not os.path.exists(self.index_path):
            return None
        try:
            with open(self.index_path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            return self._stale("unreadable index (%s)" % e)
        n, size = len(self.dataset), self.resize_longest
        if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
            return self._stale("not a cache index of format %s" % CACHE_FORMAT)
        if info.get("fingerprint") != self.dataset.fingerprint():
            return self._stale("built for another image list (dataset changed)")
        if info.get("resize_longest") != size or info.get("count") != n:
            return self._stale("built for L=%s, %s images" % (info.get("resize_longest"), info.get("count")))
        try:
            pix = np.load(os.path.join(self.cache_dir, info["pixels"]), mmap_mode="r", allow_pickle=False)
            sizes = np.load(os.path.join(self.cache_dir, info["sizes"]), mmap_mode="r", allow_pickle=False)
            ok = pix.shape == (n, size, size, 3) and pix.dtype == np.uint8 and sizes.shape == (n, 2)
            del pix, sizes
        except (OSError, ValueError, KeyError, TypeError) as e:
            return self._stale("cache files unreadable (%s)" % e)
        if not ok:
            return self._stale("cache files have the wrong shape")
        return info

    def _decode(self, i):
        try:
            return resize_longest_side(self.dataset.load(i), self.resize_longest), None
        except ImageError as e:
            return None, str(e)

    def _results(self, n):
        """(index, image or None, reason) in index order, decoded by a thread pool.

        Threads suffice: PIL releases the GIL while decoding and resizing.
        """
        if self.workers <= 1:
            for i in range(n):
                yield (i,) + self._decode(i)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as ex:
            for start in range(0, n, _CHUNK):
                idx = range(start, min(n, start + _CHUNK))
                for i, (img, reason) in zip(idx, ex.map(self._decode, idx)):
                    yield i, img, reason

    def _build(self, progress):
        ds, size, n = self.dataset, self.resize_longest, len(self.dataset)
        fp = ds.fingerprint()
        os.makedirs(self.cache_dir, exist_ok=True)
        stem = "%s-%s" % (self.base, fp[:12])
        pixels_name, sizes_name = stem + ".pixels.npy", stem + ".sizes.npy"
        sizes = np.zeros((n, 2), dtype=np.int32)
        bad = []
        t0 = time.time()
        bar = progress_bar(n, "caching %s/%s at %d px" % (ds.name, ds.split, size), progress, unit="img")
        with atomic_path(os.path.join(self.cache_dir, pixels_name)) as tmp:
            pix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
            try:
                for i, img, reason in self._results(n):
                    if img is None:
                        bad.append([i, reason])
                    else:
                        h, w = img.shape[:2]
                        pix[i, :h, :w] = img
                        sizes[i] = (h, w)
                    if bar is not None:
                        bar.update(1)
                pix.flush()
            finally:
                del pix
                if bar is not None:
                    bar.close()
        with atomic_path(os.path.join(self.cache_dir, sizes_name)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, sizes, allow_pickle=False)
        info = {
            "format": CACHE_FORMAT,
            "fingerprint": fp,
            "resize_longest": size,
            "count": n,
            "dataset": ds.describe(),
            "pixels": pixels_name,
            "sizes": sizes_name,
            "bad": bad,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 2),
        }
        write_json_atomic(self.index_path, info)
        self._remove_stale(keep=(pixels_name, sizes_name))
        return info

    def _remove_stale(self, keep):
        """Delete earlier builds of this cache (other fingerprints); open memmaps of them stay valid on POSIX."""
        for fn in os.listdir(self.cache_dir):
            if fn.startswith(self.base + "-") and fn.endswith((".pixels.npy", ".sizes.npy")) and fn not in keep:
                try:
                    os.unlink(os.path.join(self.cache_dir, fn))
                except OSError:
                    pass
