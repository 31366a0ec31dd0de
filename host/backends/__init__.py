"""Feature extraction backends: one interface over the accelerator, the emulator and QONNX.

``make_backend(name, bundle, **opts)`` returns a ``Backend`` whose ``extract(images,
batch_size)`` turns an NHWC uint8 batch into ``(N, feature_width)`` int8 +-1 features, the same
bits whichever backend computes them:

- ``pynq``: the FINN accelerator on the board, through its IODMAs (``host.backends.pynq``);
- ``emulator``: the bit-exact numpy model from the bundle's emulator weights;
- ``onnx``: the bundle's QONNX graph through qonnx, a reference on a PC.

Each backend's module is imported only when it is made, so importing this package needs
neither pynq nor qonnx. ``available_backends(bundle)`` says which ones can run here;
``default_backends(bundle)`` which ones a command or notebook uses when none is named: on a PYNQ
board (``host.boards.pynq_board()``) ``pynq`` comes first even where it cannot run, so that a
missing ``pynq`` package, bitfile or overlay is an error there instead of a silent switch to the
emulator, which would leave the user believing the FPGA ran.

Options (``make_backend`` keyword arguments): ``pynq`` takes ``timeout_s``,
``timeout_per_image_s`` and ``download`` (see ``PynqBackend``); the others take none.
"""

import importlib.util

from ..errors import BnnError
from .base import Backend, check_images

__all__ = ["BACKENDS", "Backend", "available_backends", "check_images", "default_backends", "make_backend"]

BACKENDS = ("pynq", "emulator", "onnx")


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


def default_backends(bundle):
    """``available_backends(bundle)``, with ``pynq`` first in any case on a PYNQ board (module docstring)."""
    from ..boards import pynq_board

    names = available_backends(bundle)
    if pynq_board() is not None and "pynq" not in names:
        names.insert(0, "pynq")
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
