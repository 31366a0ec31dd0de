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

4. Environment parity. The ``finn`` launcher (``finn.interface.run_finn.prepare_finn``) also exports
   ``FINN_RTLLIB`` / ``FINN_CUSTOM_HLS`` (every generated HLS and stitching script reads
   ``$::env(FINN_CUSTOM_HLS)``), puts ``$XILINX_VIVADO/lib/lnx64.o`` (and Vitis HLS's fpo library)
   on ``LD_LIBRARY_PATH``, sets ``XILINX_LOCAL_USER_DATA=no``, appends the tools' ``bin`` folders to
   ``PATH`` and defaults ``PYTHONPATH``. :func:`launcher_environment` computes exactly that from the
   same settings with FINN's own helpers; ``tests/build_fpga/test_finn_env.py`` runs the launcher's
   ``prepare_finn`` and compares the variables both set. The launcher's process-wide steps (restart
   with LD_LIBRARY_PATH in effect, ``spawn`` for FINN's worker pools) are :func:`launch_like_finn`,
   which ``python -m build_fpga`` runs first on the Vivado path. Not copied: the dependency update
   (``finn deps update`` is the user's step; :mod:`build_fpga.preflight` checks its result).

``build_dataflow_cfg`` also hijacks process-wide logging (``logging.basicConfig(force=True)``,
``sys.stdout``/``sys.stderr`` replaced by its ``PrintLogger``); :func:`contained_build_logging`
puts them back afterwards.

Usage::

    from bnn_transfer.build_fpga.finn_env import prepare_finn
    env = prepare_finn(build_dir)          # before importing finn.builder
    from finn.builder.build_dataflow import build_dataflow_cfg

or ``with finn_session(build_dir): ...`` to also restore the environment variables and FINN's global
settings on exit. Where Vivado exists, :func:`prepare_finn` initialises the settings (the user's
settings file and ``finn deps update`` provide finn-hlslib and XSI, as for the ``finn`` CLI) and
defers building FINN's XSI bindings to their first use (rtlsim), instead of at import.
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


class VivadoRequired(RuntimeError):
    """Raised by the XSI stubs: the called FINN feature (rtlsim) needs Vivado."""


@dataclass
class FinnEnv:
    build_dir: Path  # FINN's FINN_BUILD_DIR (generated HLS/RTL code goes below it)
    vivado: bool  # Vivado found: nothing stubbed
    stubbed: List[str] = field(default_factory=list)  # finn.xsi names bound to stubs
    environment: Dict[str, str] = field(default_factory=dict)  # what launcher_environment set


def vivado_requested() -> bool:
    """True when the environment points at a Vivado install (``vivado`` on PATH or XILINX_VIVADO set):
    a build then goes for the bitstream, and the pre-flight names whatever else is missing."""
    return shutil.which("vivado") is not None or bool(os.environ.get("XILINX_VIVADO"))


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


def _defer_xsi() -> List[str]:
    """With Vivado: bind ``SimEngine`` (the one name FINN imports eagerly, at module import) to a class
    that loads FINN's XSI bindings when first instantiated. The other names stay lazy through
    ``finn.xsi.__getattr__``. A build that never simulates (FIFO strategy force_minimal_fifos) then
    never compiles XSI, and a failure to compile is FINN's one-line error at the step that needs it."""
    import finn.xsi as xsi

    if "SimEngine" in vars(xsi):
        return []

    class SimEngine:  # noqa: D401
        def __new__(cls, *a, **k):
            xsi.ensure_available()  # rebinds xsi.SimEngine to the real class
            return xsi.SimEngine(*a, **k)

    xsi.SimEngine = SimEngine
    return ["SimEngine (deferred)"]


def launcher_environment(settings, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment variables finn-plus's launcher sets for a build, as ``{name: new value}``.

    Derived from ``settings`` and ``environ`` (default ``os.environ``, not modified) with the
    launcher's own helpers, so a new finn-plus that adds a path changes this too:
    ``FINNSettings.update_environment`` (FINN_BUILD_DIR, FINN_DEPS, FINN_DEPS_DEFINITIONS,
    NUM_DEFAULT_WORKERS), ``set_synthesis_tools_paths`` (PATH, PLATFORM_REPO_PATHS),
    ``xilinx_ld_library_paths`` (LD_LIBRARY_PATH), then PYTHONPATH, XILINX_LOCAL_USER_DATA,
    FINN_RTLLIB, FINN_CUSTOM_HLS as in ``run_finn.prepare_finn``, and FINN_SETTINGS as its
    ``configure_start_method`` exports it (only when the settings file exists).
    """
    from finn.interface import run_finn
    from finn.interface.interface_utils import resolve_module_path, set_synthesis_tools_paths

    base = dict(os.environ if environ is None else environ)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(base)
        settings.update_environment()
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            set_synthesis_tools_paths()  # prints a warning per missing tool
        run_finn.prepend_ld_library_paths(run_finn.xilinx_ld_library_paths())
        os.environ.setdefault("PYTHONPATH", "")
        os.environ.setdefault("XILINX_LOCAL_USER_DATA", "no")
        os.environ["FINN_RTLLIB"] = resolve_module_path("finn-rtllib")
        os.environ["FINN_CUSTOM_HLS"] = resolve_module_path("custom_hls")
        if "FINN_SETTINGS" not in os.environ and settings.get_path().exists():
            os.environ["FINN_SETTINGS"] = str(settings.get_path())
        after = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {k: v for k, v in after.items() if base.get(k) != v}


def launch_like_finn(module: str) -> None:
    """What finn-plus's ``finn`` launcher does first (``run_finn.main``), for ``python -m <module>`` on
    the Vivado path: restart the process with Xilinx's libraries on LD_LIBRARY_PATH (FINN's
    ``ensure_ld_library_path``: ld.so reads the variable only at start, and FINN's XSI simulator loads
    Vivado's libraries into this process), then FINN's multiprocessing start method (spawn: forking a
    process that has loaded torch, onnxruntime and Vivado's libraries is unsafe). FINN's own restart
    runs ``argv[0]`` as a script, which would break a package's relative imports; this one re-runs the
    module. Call it before anything else runs: the process image is replaced."""
    from finn.interface.run_finn import _LD_REEXEC_MARKER, prepend_ld_library_paths, xilinx_ld_library_paths
    from finn.util.multiprocessing import configure_start_method

    paths = xilinx_ld_library_paths()
    if paths and prepend_ld_library_paths(paths) and os.environ.get(_LD_REEXEC_MARKER) != "1":
        os.environ[_LD_REEXEC_MARKER] = "1"  # a search path reset from outside cannot loop the restart
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", module] + sys.argv[1:], os.environ)
    configure_start_method()


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


def finn_settings(build_dir, num_workers: Optional[int] = None):
    """FINN's settings for a build in ``build_dir`` (FINN_BUILD_DIR ``<build_dir>/finn_tmp``), read as
    the launcher reads them (settings file, then environment, then these arguments); no side effects."""
    from finn.interface.settings import FINN_ROOT, FINNSettings

    build_dir = Path(build_dir).resolve()
    kwargs = {"finn_build_dir": str(build_dir / "finn_tmp")}
    if num_workers is not None:
        kwargs["num_default_workers"] = int(num_workers)
    # The user's settings file (FINN_SETTINGS, finn-plus's root or ~/.finn, as for the launcher) holds
    # finn_deps etc.; without one, point at a file that does not exist so FINN neither reads nor
    # creates ~/.finn.
    override = None
    if not ("FINN_SETTINGS" in os.environ or (FINN_ROOT / "settings.yaml").exists()
            or (Path.home() / ".finn").exists()):
        override = build_dir / "finn_settings.yaml"
    return FINNSettings.init(
        override_settings_path=override,
        flow_config=build_dir / "flow.yaml",  # only its parent is used, to resolve relative paths
        auto_set_environment_vars=False,
        **kwargs,
    )


def prepare_finn(build_dir, num_workers: Optional[int] = None) -> FinnEnv:
    """Initialise FINN's settings under ``build_dir``, the launcher's environment
    (:func:`launcher_environment`) and, without Vivado, the XSI/exit stubs.

    Call before importing ``finn.builder``. Idempotent; a second call re-points the build dir.
    :func:`finn_session` restores the environment afterwards.
    """
    import finn.util.settings as fs

    before = dict(os.environ)
    settings = finn_settings(build_dir, num_workers)
    finn_tmp = settings.finn_build_dir
    finn_tmp.mkdir(parents=True, exist_ok=True)
    vivado = vivado_available()
    settings._auto_set_envvars = True  # as FINNSettings.init(auto_set_environment_vars=True) leaves it
    fs._SETTINGS = settings
    environment = launcher_environment(settings, before)
    os.environ.update(environment)
    env = FinnEnv(build_dir=finn_tmp, vivado=vivado, environment=environment)
    if vivado:
        env.stubbed = _defer_xsi()
    else:
        env.stubbed = _stub_xsi()
        _patch_exit_buildflow()
    return env


@contextlib.contextmanager
def finn_session(build_dir, num_workers: Optional[int] = None) -> Iterator[FinnEnv]:
    """:func:`prepare_finn`, then restore FINN's env vars and global settings on exit.

    The XSI stubs and the exit_buildflow patch stay (modules that imported them keep references;
    both are inert where Vivado is absent, and never installed where it is present).
    """
    import finn.util.settings as fs

    saved_environ = dict(os.environ)
    saved_settings = fs._SETTINGS
    env = None
    try:
        env = prepare_finn(build_dir, num_workers=num_workers)
        yield env
    finally:
        fs._SETTINGS = saved_settings
        for k in env.environment if env is not None else ():
            v = saved_environ.get(k)
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
