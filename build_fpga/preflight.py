"""Pre-flight of the with-Vivado path: everything FINN's hardware steps will need, checked in seconds.

FINN finds a missing piece only when it gets there: Vitis HLS at the first layer's IP generation,
the board files at the Zynq shell after all of HLS, the simulator's build prerequisites in the
middle of FIFO sizing. :func:`preflight` runs before any FINN step and reports every missing piece
as one line saying how to get it (the CLI prints each as ``error: ...`` and exits 2):

- Vivado and Vitis HLS (``vitis-run`` after 2024.2, as FINN's ``CallHLS`` picks) on PATH, with
  XILINX_VIVADO / XILINX_HLS set; their versions read from the tools themselves (``-version``) must
  agree with each other, with the version FINN parses from the XILINX_VIVADO path, and be one
  finn-plus names (2022.2, 2024.2);
- finn-hlslib in FINN's deps folder (``finn deps update``);
- the board files of the board part FINN's Zynq shell template sets, wherever Vivado finds them
  (:func:`board_repositories`), vendor and name matched case-insensitively as Vivado does (Avnet's
  board.xml says ``Ultra96v2``, FINN's part ``avnet.com:ultra96v2:part0:1.2``);
- for the ``distributed_sim`` FIFO strategy: what FINN's C++ FIFO simulator is built with (cmake,
  g++, OpenMP, Boost.Program_options, nlohmann_json from FINN's deps) and LD_LIBRARY_PATH holding
  Vivado's simulator libraries when this process started (ld.so reads it only then).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from xml.etree import ElementTree

from bnn_transfer.host.errors import BnnError

# finn-plus 1.6.1's package description: "Vivado, Vitis, and Vitis HLS (2022.2 or 2024.2)".
SUPPORTED_VERSIONS = ("2022.2", "2024.2")
# FINN's AutoFIFOSizingMethod values offered by --fifo. force_minimal_fifos needs nothing beyond
# Vivado and HLS; distributed_sim simulates every layer (XSI, cmake, Boost, OpenMP); live_fifo sizes
# on the board with an instrumented design and driver of its own, which bundles do not carry.
FIFO_STRATEGIES = ("force_minimal_fifos", "distributed_sim")
DEFAULT_FIFO = "force_minimal_fifos"
SETTINGS_HINT = "source <Xilinx>/Vivado/<version>/settings64.sh (2022.2 or 2024.2)"
DEPS_HINT = "run `finn deps update --accept-defaults`"


def board_part(finn_board: str) -> Optional[str]:
    """The ``board_part`` FINN's Zynq shell (``custom_zynq_shell_template``) sets for ``finn_board``."""
    from finn.transformation.fpgadataflow.templates import custom_zynq_shell_template as shell

    m = re.search(r'\$BOARD == "%s"\}\s*\{(.*?)\}' % re.escape(finn_board), shell, re.S)
    bp = m and re.search(r"set_property board_part (\S+)", m.group(1))
    return bp.group(1) if bp else None


def _find_tool(name: str, environ: Mapping[str, str]) -> Optional[str]:
    # FINN's resolve_xilinx_tool: FINN_TOOL_DIR_OVERRIDE/<name> if set, else <name> on PATH.
    override = environ.get("FINN_TOOL_DIR_OVERRIDE")
    if override:
        p = os.path.join(override, name)
        return p if os.access(p, os.X_OK) else None
    return shutil.which(name, path=environ.get("PATH", ""))


def tool_version(exe: str, environ: Mapping[str, str]) -> Optional[str]:
    """``2024.2`` from ``<exe> -version`` ("Vivado v2024.2 (64-bit)", "... Vitis HLS ... v2024.2")."""
    try:
        r = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=120, env=dict(environ))
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bv(20\d\d\.\d)\b", r.stdout)
    return m.group(1) if m else None


def _path_version(path: str) -> Optional[str]:
    m = re.search(r"\b(20\d{2})\.(1|2)\b", path)  # finn.util.basic.get_vivado_version's pattern
    return "%s.%s" % m.groups() if m else None


def board_repositories(environ: Mapping[str, str], finn_deps: Path, extra: Sequence[str] = ()) -> List[Path]:
    """Where Vivado looks for board files: the folders the user names (``--board-repo``, passed on to
    Vivado's ``board.repoPaths``), FINN's deps ``board_files`` (FINN's Zynq shell adds it), Vivado's own
    ``data/boards/board_files`` and its installed XilinxBoardStore (``data/xhub/boards/XilinxBoardStore/
    boards``: ZCU104, KV260 and the other AMD boards), and the user's XHUB store, where Vivado's
    "Vivado Store > Boards" installs (``~/.Xilinx/Vivado/<version>/xhub/board_store``)."""
    repos = [Path(d) for d in extra] + [Path(finn_deps) / "board_files"]
    home = environ.get("XILINX_VIVADO")
    if home:
        repos += [Path(home) / "data" / "boards" / "board_files",
                  Path(home) / "data" / "xhub" / "boards" / "XilinxBoardStore" / "boards"]
        store = _user_board_store(environ)
        repos += [store] if store else []
    return repos


def user_board_store(home: str, version: str) -> Path:
    return Path(home) / ".Xilinx" / "Vivado" / version / "xhub" / "board_store"


def _user_board_store(environ: Mapping[str, str]) -> Optional[Path]:
    version = _path_version(environ.get("XILINX_VIVADO", ""))
    return user_board_store(environ["HOME"], version) if version and environ.get("HOME") else None


def _board_id(xml: Path) -> Optional[Tuple[str, str, str]]:
    """(vendor, name, file_version) of a board.xml, vendor and name lower-cased; None if unreadable."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    if root.tag != "board":
        return None
    return (root.get("vendor", "").lower(), root.get("name", "").lower(),
            (root.findtext("file_version") or "").strip())


def find_board_files(part: str, repos: Sequence[Path]) -> Optional[Path]:
    """The ``board.xml`` for ``vendor:name:part0:version`` under one of ``repos``, or None."""
    vendor, name, _, version = part.split(":")
    want = (vendor.lower(), name.lower(), version)
    for repo in repos:
        for xml in sorted(Path(repo).rglob("board.xml")) if Path(repo).is_dir() else ():
            if _board_id(xml) == want:
                return xml
    return None


def board_files_hint(part: str) -> str:
    """Where the board files of ``part`` come from: ``finn deps update`` for the boards FINN's
    dependency list fetches (Pynq-Z1/Z2, Avnet's boards, KV260), Vivado's board store otherwise."""
    vendor, name = part.split(":")[:2]
    if _finn_fetches_board(vendor, name):
        return DEPS_HINT
    return ("install them from Vivado's board store (Tools > Vivado Store > Boards, or a full Vivado install's "
            "data/xhub/boards/XilinxBoardStore) or pass their folder with --board-repo DIR")


def _finn_deps_list() -> Dict:
    import finn.interface
    import yaml

    return yaml.safe_load((Path(finn.interface.__file__).parent / "external_dependencies.yaml").read_text())


def _finn_fetches_board(vendor: str, name: str) -> bool:
    deps = _finn_deps_list()
    names = {k.lower() for k in deps.get("direct_download_deps", {})}
    for dep in deps.get("boardfile_deps", {}).values():
        sub = Path(dep.get("subdirectory", "."))
        if sub.name in ("", "."):  # a vendor's whole repository, e.g. github.com/Avnet/bdf
            if vendor.split(".")[0].lower() in dep.get("url", "").lower():
                return True
        names.add(sub.name.lower())
    return name.lower() in names


def _vivado_checks(environ: Mapping[str, str], found: Dict, problems: List[str]) -> None:
    vivado = _find_tool("vivado", environ)
    home = environ.get("XILINX_VIVADO")
    if not home:
        problems.append("XILINX_VIVADO is not set (FINN reads Vivado's version and libraries from it): "
                        + SETTINGS_HINT)
    if vivado is None:
        problems.append("vivado not found on PATH: " + SETTINGS_HINT)
    if not home or vivado is None:
        return
    version = tool_version(vivado, environ)
    found["vivado"] = version
    if version is None:
        problems.append("%s -version printed no version: is it Vivado? %s" % (vivado, SETTINGS_HINT))
    elif version not in SUPPORTED_VERSIONS:
        problems.append("Vivado %s is not one finn-plus 1.6.1 supports (%s): %s"
                        % (version, " or ".join(SUPPORTED_VERSIONS), SETTINGS_HINT))
    elif _path_version(home) != version:
        problems.append("XILINX_VIVADO=%s does not name Vivado %s (FINN picks its HLS tool by the version in "
                        "this path): %s" % (home, version, SETTINGS_HINT))
    # FINN's CallHLS: vitis_hls up to 2024.2, vitis-run after.
    hls_name = "vitis-run" if version and version > "2024.2" else "vitis_hls"
    hls = _find_tool(hls_name, environ)
    if not environ.get("XILINX_HLS"):
        problems.append("XILINX_HLS is not set: source the Vitis HLS settings64.sh of the same release "
                        "(<Xilinx>/Vitis_HLS/<version>/, or <Xilinx>/Vitis/<version>/ from 2024.2)")
    if hls is None:
        problems.append("%s not found on PATH (FINN synthesizes every HLS layer with it): source "
                        "<Xilinx>/Vitis_HLS/<version>/settings64.sh (Vitis/<version>/ from 2024.2)" % hls_name)
        return
    hls_version = tool_version(hls, environ)
    found["vitis_hls"] = hls_version
    if version and hls_version != version:
        problems.append("%s is version %s but Vivado is %s: source the settings64.sh of one release for both"
                        % (hls, hls_version, version))


def finn_pinned_commit(dep: str) -> Optional[str]:
    """The commit finn-plus pins for git dependency ``dep`` (its ``external_dependencies.yaml``)."""
    return _finn_deps_list().get("git_deps", {}).get(dep, {}).get("commit")


def _hlslib_pin_warnings(hlslib: Path) -> List[str]:
    """finn-hlslib's checked-out commit against finn-plus's pin: FINN generates code for its pinned
    finn-hlslib, and another one may not compile or may compute differently."""
    pinned = finn_pinned_commit("finn-hlslib")
    try:
        head = subprocess.run(["git", "-C", str(hlslib), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    if not pinned or head == pinned:
        return []
    return ["finn-hlslib in %s is at %s, finn-plus pins %s: %s" % (
        hlslib, head[:12] or "an unknown commit (not a git checkout)", pinned[:12], DEPS_HINT)]


def _fifo_checks(fifo: str, finn_deps: Path, environ: Mapping[str, str], startup_ld: str,
                 problems: List[str]) -> None:
    if fifo == "force_minimal_fifos":
        return
    if fifo != "distributed_sim":
        problems.append("--fifo %s: choose one of %s" % (fifo, ", ".join(FIFO_STRATEGIES)))
        return
    why = "(FIFO sizing by simulation builds FINN's C++ simulator; or use --fifo force_minimal_fifos)"
    import importlib.util

    for module in ("cmake", "pybind11"):  # FINN's XSI bindings are a pybind11 module built with cmake
        if importlib.util.find_spec(module) is None:
            problems.append("%s is not installed in this Python: pip install %s %s" % (module, module, why))
    if shutil.which("g++", path=environ.get("PATH", "")) is None:
        problems.append("g++ not found on PATH: apt-get install g++ " + why)
    else:
        omp = subprocess.run(["g++", "-print-file-name=libgomp.so"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(omp):
            problems.append("OpenMP (libgomp) not found for g++: apt-get install libgomp1 " + why)
    if not any(os.path.exists(os.path.join(d, "boost", "program_options.hpp"))
               for d in ("/usr/include", "/usr/local/include")):
        problems.append("Boost.Program_options headers not found: apt-get install libboost-program-options-dev "
                        + why)
    if not (finn_deps / "nlohmann_json" / "json" / "CMakeLists.txt").exists():
        problems.append("nlohmann_json not found in %s: %s %s" % (finn_deps, DEPS_HINT, why))
    home = environ.get("XILINX_VIVADO")
    if home and not os.path.isfile(os.path.join(home, "data", "xsim", "include", "xsi.h")):
        problems.append("%s/data/xsim/include/xsi.h not found (FINN's simulator is compiled against Vivado's "
                        "simulator interface): a Vivado install with its simulator is needed %s" % (home, why))
    if home and os.path.join(home, "lib", "lnx64.o") not in startup_ld.split(os.pathsep):
        problems.append("LD_LIBRARY_PATH lacks %s/lib/lnx64.o at start (FINN's simulator loads Vivado's "
                        "libraries into this process): export LD_LIBRARY_PATH=$XILINX_VIVADO/lib/lnx64.o:"
                        "$LD_LIBRARY_PATH before running" % home)


def check(finn_board: str, fifo: str, finn_deps, environ: Optional[Mapping[str, str]] = None,
          startup_ld: Optional[str] = None, board_repos: Sequence[str] = ()) -> Tuple[Dict, List[str]]:
    """(what was found, one line per missing piece). Runs ``vivado -version`` / ``vitis_hls -version``."""
    environ = os.environ if environ is None else environ
    finn_deps = Path(finn_deps)
    found: Dict = {"finn_deps": str(finn_deps), "fifo": fifo, "warnings": []}
    problems: List[str] = []
    _vivado_checks(environ, found, problems)
    if not (finn_deps / "finn-hlslib" / "bnn-library.h").exists():
        problems.append("finn-hlslib not found in %s (FINN's HLS layers include it): %s" % (finn_deps, DEPS_HINT))
    else:
        found["warnings"] += _hlslib_pin_warnings(finn_deps / "finn-hlslib")
    part = board_part(finn_board)
    found["board_part"] = part
    if part is None:
        problems.append("FINN's Zynq shell sets no board part for %s: choose another --board" % finn_board)
    else:
        repos = board_repositories(environ, finn_deps, board_repos)
        xml = find_board_files(part, repos)
        found["board_files"] = str(xml) if xml else None
        # What Vivado is told beyond what it searches itself: FINN's launcher sets XILINX_LOCAL_USER_DATA=no,
        # which keeps Vivado out of the user's ~/.Xilinx, so a board from the XHUB store is passed explicitly.
        found["vivado_board_repos"] = [str(Path(d).resolve()) for d in board_repos]
        store = _user_board_store(environ)
        if xml is not None and store is not None and store in xml.parents:
            found["vivado_board_repos"].append(str(store))
        if xml is None:
            problems.append("board files for %s (%s) not found in %s: %s"
                            % (finn_board, part, ", ".join(map(str, repos)), board_files_hint(part)))
    _fifo_checks(fifo, finn_deps, environ,
                 environ.get("LD_LIBRARY_PATH", "") if startup_ld is None else startup_ld, problems)
    return found, problems


def preflight(finn_board: str, fifo: str, finn_deps, environ: Optional[Mapping[str, str]] = None,
              startup_ld: Optional[str] = None, board_repos: Sequence[str] = ()) -> Dict:
    """:func:`check`; any problem raises one BnnError whose lines (``pre-flight: ...``, joined by
    ``\\nerror: `` so the CLI prints each as an ``error:`` line) are the problems."""
    found, problems = check(finn_board, fifo, finn_deps, environ, startup_ld, board_repos)
    if problems:
        raise BnnError("\nerror: ".join("pre-flight: " + p for p in problems))
    return found
