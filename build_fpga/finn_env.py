"""Make finn-plus's Python API usable in-process, with or without Vivado.

finn-plus expects to be booted by its ``finn`` CLI (``finn.interface.run_finn.prepare_finn``), which
initialises the global settings, builds the XSI simulator bindings against the installed Vivado and
fetches git dependencies. The CLI refuses to run without Vivado. Calling the builder from Python
(``finn.builder.build_dataflow.build_dataflow_cfg``) instead needs exactly three things, all
handled here and nowhere else in this repo (finn-plus 1.6.1):

1. Settings. ``finn.util.settings.get_settings()`` raises unless ``_SETTINGS`` is set or
   ``FINN_BUILD_DIR`` is in the environment; ``FINNSettings.init`` without an explicit settings path
   would also create ``~/.finn/``. We build the settings ourselves with a settings file path inside
   the caller's build dir (it need not exist), ``finn_build_dir = <build_dir>/finn_tmp`` (where FINN
   puts generated code via ``make_build_dir``) and export ``FINN_BUILD_DIR`` for worker processes
   (``_initialize_from_environment`` rebuilds settings from it under spawn/forkserver).
2. XSI. ``finn.builder.build_dataflow_steps`` runs ``from finn.xsi import SimEngine`` at import
   time; ``finn.xsi.__getattr__`` then calls ``ensure_available()``, which raises ``OSError`` when
   ``XILINX_VIVADO`` is unset. Without Vivado we bind the eight lazy names (``finn.xsi._LAZY_NAMES``)
   to stubs that raise :class:`VivadoRequired` when *used*, so importing succeeds and only rtlsim
   fails, with a clear message. With Vivado nothing is stubbed and FINN's own XSI path is used.
3. ``exit_buildflow``. At the end of every build (also after a failure) it writes
   ``report/metadata_builder.json`` with ``tool_version = Path(get_vivado_root()).name``, and
   ``get_vivado_root`` raises without ``XILINX_VIVADO``, turning a finished build into an exception.
   Without Vivado we replace the name ``get_vivado_root`` *in finn.builder.build_dataflow only* by
   one that returns ``"none (Vivado not on PATH)"``.

``build_dataflow_cfg`` also hijacks process-wide logging (``logging.basicConfig(force=True)``,
``sys.stdout``/``sys.stderr`` replaced by its ``PrintLogger``); :func:`contained_build_logging`
puts them back afterwards.

Usage::

    from build_fpga.finn_env import prepare_finn
    env = prepare_finn(build_dir)          # before importing finn.builder
    from finn.builder.build_dataflow import build_dataflow_cfg

or ``with finn_session(build_dir): ...`` to also restore the environment variables and FINN's global
settings on exit. Where Vivado exists, :func:`prepare_finn` only initialises the settings (the user's
settings file and ``finn deps update`` provide finn-hlslib and XSI, as for the ``finn`` CLI).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

# What get_vivado_root reports in FINN's metadata_builder.json when Vivado is absent.
NO_VIVADO_VERSION = "none (Vivado not on PATH)"
_ENV_VARS = ("FINN_BUILD_DIR", "FINN_DEPS", "FINN_DEPS_DEFINITIONS", "NUM_DEFAULT_WORKERS")


class VivadoRequired(RuntimeError):
    """Raised by the XSI stubs: the called FINN feature (rtlsim) needs Vivado."""


@dataclass
class FinnEnv:
    build_dir: Path  # FINN's FINN_BUILD_DIR (generated HLS/RTL code goes below it)
    vivado: bool  # Vivado found: nothing stubbed
    stubbed: List[str] = field(default_factory=list)  # finn.xsi names bound to stubs
    missing: List[str] = field(default_factory=list)  # what a hardware build would still need


def vivado_available() -> bool:
    """True when ``vivado`` is on PATH and XILINX_VIVADO names its install (FINN needs both)."""
    return shutil.which("vivado") is not None and bool(os.environ.get("XILINX_VIVADO"))


def finn_installed() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("finn") is not None and importlib.util.find_spec("qonnx") is not None
    except (ImportError, ValueError):
        return False


def _stub_xsi() -> List[str]:
    import finn.xsi as xsi

    def make(name):
        msg = "%s needs Vivado's XSI simulator (finn.xsi); Vivado is not installed/on PATH here" % name

        if name == "SimEngine":
            # build_dataflow_steps uses SimEngine in a type annotation evaluated at import: keep it a class.
            class SimEngine:  # noqa: D401
                def __init__(self, *a, **k):
                    raise VivadoRequired(msg)

            return SimEngine

        def stub(*a, **k):
            raise VivadoRequired(msg)

        stub.__name__ = name
        return stub

    stubbed = []
    for name in sorted(xsi._LAZY_NAMES):
        # vars() bypasses the module __getattr__, which would try (and fail) to load XSI.
        if name not in vars(xsi):
            setattr(xsi, name, make(name))
            stubbed.append(name)
    return stubbed


def _patch_exit_buildflow() -> None:
    import finn.builder.build_dataflow as bd

    if getattr(bd.get_vivado_root, "_bnn_transfer_stub", False):
        return
    original = bd.get_vivado_root

    def get_vivado_root() -> str:
        if os.environ.get("XILINX_VIVADO"):
            return original()
        return NO_VIVADO_VERSION

    get_vivado_root._bnn_transfer_stub = True
    bd.get_vivado_root = get_vivado_root


def prepare_finn(build_dir, num_workers: Optional[int] = None) -> FinnEnv:
    """Initialise FINN's settings under ``build_dir`` and, without Vivado, the XSI/exit stubs.

    Call before importing ``finn.builder``. Idempotent; a second call re-points the build dir.
    Sets FINN_BUILD_DIR, FINN_DEPS, FINN_DEPS_DEFINITIONS and NUM_DEFAULT_WORKERS in os.environ
    (FINN's worker processes read them); :func:`finn_session` restores them.
    """
    import finn.util.settings as fs
    from finn.interface.settings import FINNSettings

    build_dir = Path(build_dir).resolve()
    finn_tmp = build_dir / "finn_tmp"
    finn_tmp.mkdir(parents=True, exist_ok=True)
    vivado = vivado_available()
    kwargs = {"finn_build_dir": str(finn_tmp)}
    if num_workers is not None:
        kwargs["num_default_workers"] = int(num_workers)
    # With Vivado the user's settings file (FINN_SETTINGS, repo root or ~/.finn) holds finn_deps etc.;
    # without, point at a file that does not exist so FINN neither reads nor creates ~/.finn.
    override = None if vivado else build_dir / "finn_settings.yaml"
    if override is None and "FINN_SETTINGS" not in os.environ and not (Path.home() / ".finn").exists():
        override = build_dir / "finn_settings.yaml"
    settings = FINNSettings.init(
        override_settings_path=override,
        flow_config=build_dir / "flow.yaml",  # only its parent is used, to resolve relative paths
        auto_set_environment_vars=True,
        **kwargs,
    )
    fs._SETTINGS = settings
    env = FinnEnv(build_dir=finn_tmp, vivado=vivado)
    if not vivado:
        env.stubbed = _stub_xsi()
        env.missing.append("Vivado/Vitis HLS (synthesis, IP generation, cppsim, rtlsim, bitstream)")
    if not (settings.finn_deps / "finn-hlslib").exists():
        env.missing.append(
            "finn-hlslib in %s (run `finn deps update`; needed from step_hw_ipgen on)" % settings.finn_deps)
    if not vivado:
        _patch_exit_buildflow()
    return env


@contextlib.contextmanager
def finn_session(build_dir, num_workers: Optional[int] = None) -> Iterator[FinnEnv]:
    """:func:`prepare_finn`, then restore FINN's env vars and global settings on exit.

    The XSI stubs and the exit_buildflow patch stay (modules that imported them keep references;
    both are inert where Vivado is absent, and never installed where it is present).
    """
    import finn.util.settings as fs

    saved_env: Dict[str, Optional[str]] = {k: os.environ.get(k) for k in _ENV_VARS}
    saved_settings = fs._SETTINGS
    try:
        yield prepare_finn(build_dir, num_workers=num_workers)
    finally:
        fs._SETTINGS = saved_settings
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def contained_build_logging() -> Iterator[None]:
    """Undo what build_dataflow_cfg's setup_logging does to the process (stdout/stderr, root logger)."""
    root = logging.getLogger()
    saved = (sys.stdout, sys.stderr, list(root.handlers), root.level)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in saved[2]:
                root.removeHandler(h)
                with contextlib.suppress(Exception):
                    h.close()
        for h in saved[2]:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved[3])
        logging.captureWarnings(False)
        sys.stdout, sys.stderr = saved[0], saved[1]
