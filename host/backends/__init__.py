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

How to add a backend: a module of its own with a ``Backend`` subclass taking ``(bundle, **options)``,
and one ``register_backend(BackendSpec(...))`` beside the others below, naming it, saying when it can
run and which command-line options it takes (``BackendOption``: ``host``'s commands add them to their
parsers and pass them to that backend only). Nothing else names backends: ``--backend`` choices, help, availability and
defaults all come from :data:`BACKENDS`.
"""

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple, Union

from ..errors import BnnError
from .base import Backend, check_images

__all__ = ["BACKENDS", "Backend", "BackendOption", "BackendSpec", "add_backend_options", "available_backends",
           "backend_options", "check_images", "default_backends", "make_backend", "register_backend"]


@dataclass(frozen=True)
class BackendOption:
    """A command-line option of one backend: ``flag`` (``--timeout``) parsed as ``type``; ``to_kwargs``
    turns a given value into that backend's keyword arguments (raising BnnError on a bad one)."""

    flag: str
    help: str
    to_kwargs: Callable[[Any], Dict[str, Any]]
    type: Callable[[str], Any] = float
    metavar: str = "X"

    @property
    def dest(self):
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class BackendSpec:
    """``name`` made by ``factory`` where ``can_run(bundle)``: ``"module:Class"`` under host.backends,
    imported when made (pynq and qonnx only where they run), or the class itself; ``on_board``: the
    first choice on a PYNQ board even where it cannot run."""

    name: str
    factory: Union[str, Callable[..., Backend]]
    summary: str  # for --backend's help
    can_run: Callable[[Any], bool]
    on_board: bool = False
    options: Tuple[BackendOption, ...] = ()


BACKENDS: Dict[str, BackendSpec] = {}  # fastest first


def register_backend(spec: BackendSpec) -> BackendSpec:
    flags = {o.flag: name for name, s in BACKENDS.items() for o in s.options}
    clash = [o.flag for o in spec.options if o.flag in flags]
    if spec.name in BACKENDS or clash:
        raise BnnError("backend %r: registered already, or its option %s is another backend's"
                       % (spec.name, ", ".join(clash) or "-"))
    BACKENDS[spec.name] = spec
    return spec


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _timeout(seconds):
    if not seconds > 0:
        raise BnnError("--timeout: must be a positive number of seconds, got %r" % seconds)
    # one deadline per batch, whatever its size: what a user asking for N seconds expects
    return {"timeout_s": seconds, "timeout_per_image_s": 0.0}


register_backend(BackendSpec(
    "pynq", "pynq:PynqBackend", "the FPGA",
    lambda bundle: bundle.bitfile_path is not None and _importable("pynq"), on_board=True,
    options=(BackendOption("--timeout", "seconds one batch may take before the accelerator counts as hung "
                                        "(default: 10 + 0.1 per image)", _timeout, metavar="SECONDS"),)))
register_backend(BackendSpec("emulator", "emulator:EmulatorBackend", "bit-exact numpy", lambda bundle: True))
register_backend(BackendSpec("onnx", "onnx:OnnxBackend", "QONNX reference, slow",
                             lambda bundle: bundle.onnx_path is not None and _importable("qonnx")))


def add_backend_options(group):
    """Every registered backend's options, on an argparse parser or group (default None: not given)."""
    for spec in BACKENDS.values():
        for o in spec.options:
            group.add_argument(o.flag, type=o.type, default=None, metavar=o.metavar,
                               help="%s only: %s" % (spec.name, o.help))


def backend_options(name, args):
    """The keyword arguments of backend ``name`` from its options given in ``args`` (argparse namespace)."""
    kwargs = {}
    for o in BACKENDS[name].options:
        value = getattr(args, o.dest, None)
        if value is not None:
            kwargs.update(o.to_kwargs(value))
    return kwargs


def available_backends(bundle):
    """Names of the backends that can run on this machine for ``bundle``, fastest first (nothing is imported)."""
    return [name for name, spec in BACKENDS.items() if spec.can_run(bundle)]


def default_backends(bundle):
    """``available_backends(bundle)``, with the ``on_board`` ones first in any case on a PYNQ board (module
    docstring)."""
    from ..boards import pynq_board

    names = available_backends(bundle)
    if pynq_board() is not None:
        names = [n for n, s in BACKENDS.items() if s.on_board] + [n for n in names if not BACKENDS[n].on_board]
    return names


def make_backend(name, bundle, **opts):
    """The backend ``name`` (one of :data:`BACKENDS`) for ``bundle``; raises BnnError."""
    if name not in BACKENDS:
        raise BnnError("backend: unknown backend %r (choose from %s)" % (name, ", ".join(BACKENDS)))
    factory = BACKENDS[name].factory
    if isinstance(factory, str):
        module, _, cls = factory.partition(":")
        factory = getattr(importlib.import_module(__name__ + "." + module), cls)
    return factory(bundle, **opts)
