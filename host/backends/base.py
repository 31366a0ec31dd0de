"""What every backend shares: the image check and the ``Backend`` interface (its own module, so that
the backends import it without importing the package that makes them)."""

import numpy as np

from ..errors import BnnError
from ..preprocess import Preprocess, check_batch


def check_images(images, bundle, name="images"):
    """Raise BnnError unless ``images`` is a uint8 NHWC batch of the bundle's input size.

    The shared check every backend runs first: a float image, a single HWC image, a grey
    image or an image of the wrong size would otherwise fail deep inside packing or BLAS.
    """
    return check_batch(images, Preprocess.from_dict(bundle.preprocess), name)


def _batch_size(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BnnError("batch_size: expected a positive integer, got %r" % (value,))
    return int(value)


class Backend:
    """``extract(images_nhwc_uint8, batch_size=None) -> (N, feature_width) int8 +-1``.

    Subclasses set ``name`` and ``default_batch_size`` and implement ``_run`` for one batch of
    already-validated images; ``_prepare(batch_size)`` runs before the batches of a call (the
    pynq backend sizes its DMA buffers there). Use as a context manager or call ``close()``.
    """

    name = None
    default_batch_size = 32

    def __init__(self, bundle):
        self.bundle = bundle
        self.feature_width = bundle.feature_width

    def extract(self, images, batch_size=None):
        """Features of ``images`` (N, H, W, 3) uint8, computed ``batch_size`` images at a time."""
        x = check_images(images, self.bundle)
        bs = _batch_size(self.default_batch_size if batch_size is None else batch_size)
        out = np.empty((x.shape[0], self.feature_width), dtype=np.int8)
        if x.shape[0] == 0:
            return out
        self._prepare(bs)
        for i in range(0, x.shape[0], bs):
            out[i: i + bs] = self._run(x[i: i + bs])
        return out

    def _prepare(self, batch_size):
        """Hook run once per ``extract`` call with its batch size."""

    def _run(self, images):
        raise NotImplementedError

    def close(self):
        """Release what the backend holds (DMA buffers, the overlay)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<%s backend for %s>" % (self.name, self.bundle.root)
