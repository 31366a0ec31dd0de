"""Feature extraction backends: one interface over the accelerator, the emulator and QONNX.

``make_backend(name, bundle, **opts)`` returns a ``Backend`` whose ``extract(images,
batch_size)`` turns an NHWC uint8 batch into ``(N, feature_width)`` int8 +-1 features, the same
bits whichever backend computes them:

- ``pynq``: the FINN accelerator on the board, through its IODMAs (``host.backends.pynq``);
- ``emulator``: the bit-exact numpy model from the bundle's emulator weights;
- ``onnx``: the bundle's QONNX graph through qonnx, a reference on a PC.

Each backend's module is imported only when it is made, so importing this package needs
neither pynq nor qonnx. ``available_backends(bundle)`` says which ones can run here.

Options (``make_backend`` keyword arguments): ``pynq`` takes ``timeout_s``,
``timeout_per_image_s`` and ``download`` (see ``PynqBackend``); the others take none.
"""

import importlib.util

import numpy as np

from ..errors import BnnError
from ..preprocess import Preprocess, check_batch

__all__ = ["BACKENDS", "Backend", "available_backends", "check_images", "make_backend"]

BACKENDS = ("pynq", "emulator", "onnx")


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


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends(bundle):
    """Names of the backends that can run on this machine for ``bundle``, fastest first.

    ``pynq`` needs a bitfile in the bundle and the pynq package (a PYNQ board); ``onnx`` needs
    the QONNX graph in the bundle and qonnx; ``emulator`` always runs. Nothing is imported.
    """
    names = []
    if bundle.bitfile_path is not None and _importable("pynq"):
        names.append("pynq")
    names.append("emulator")
    if bundle.onnx_path is not None and _importable("qonnx"):
        names.append("onnx")
    return names


def make_backend(name, bundle, **opts):
    """The backend ``name`` ("pynq", "emulator" or "onnx") for ``bundle``; raises BnnError."""
    if name == "emulator":
        from .emulator import EmulatorBackend as cls
    elif name == "onnx":
        from .onnx import OnnxBackend as cls
    elif name == "pynq":
        from .pynq import PynqBackend as cls
    else:
        raise BnnError("backend: unknown backend %r (choose from %s)" % (name, ", ".join(BACKENDS)))
    return cls(bundle, **opts)
