"""Pre-flight of the with-Vivado path: everything FINN's hardware steps will need, checked in seconds.

FINN finds a missing piece only when it gets there: Vitis HLS at the first layer's IP generation,
the board files at the Zynq shell after all of HLS, the simulator's build prerequisites in the
middle of FIFO sizing. :func:`preflight` runs before any FINN step and reports every missing piece
as one line saying how to get it (the CLI prints each as ``error: ...`` and exits 2):

- Vivado and Vitis HLS (``vitis-run`` after 2024.2, as FINN's ``CallHLS`` picks) on PATH, with
  XILINX_VIVADO / XILINX_HLS set; their versions read from the tools themselves (``-version``) must
  agree with each other, with the version FINN parses from the XILINX_VIVADO path, and be one
  finn-plus names (2022.2, 2024.2);
- finn-hlslib and the board's board files in FINN's deps folder (``finn deps update``); the board
  part is the one FINN's Zynq shell template sets for the board;
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
from typing import Dict, List, Mapping, Optional, Tuple

from host.errors import BnnError

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


def board_files_found(part: str, repos: List[Path]) -> bool:
    """A ``board.xml`` for ``vendor:name:part0:version`` under one of ``repos`` (as Vivado searches)."""
    vendor, name, _, version = part.split(":")
    for repo in repos:
        for xml in Path(repo).rglob("board.xml") if Path(repo).is_dir() else ():
            text = xml.read_text(errors="replace")
            if (re.search(r'<board[^>]*vendor="%s"' % re.escape(vendor), text)
                    and re.search(r'<board[^>]*name="%s"' % re.escape(name), text)
                    and "<file_version>%s</file_version>" % version in text):
                return True
    return False


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


def _fifo_checks(fifo: str, finn_deps: Path, environ: Mapping[str, str], startup_ld: str,
                 problems: List[str]) -> None:
    if fifo == "force_minimal_fifos":
        return
    if fifo != "distributed_sim":
        problems.append("--fifo %s: choose one of %s" % (fifo, ", ".join(FIFO_STRATEGIES)))
        return
    why = "(FIFO sizing by simulation builds FINN's C++ simulator; or use --fifo force_minimal_fifos)"
    import importlib.util

    if importlib.util.find_spec("cmake") is None:
        problems.append("cmake is not installed in this Python: pip install cmake " + why)
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
    if home and os.path.join(home, "lib", "lnx64.o") not in startup_ld.split(os.pathsep):
        problems.append("LD_LIBRARY_PATH lacks %s/lib/lnx64.o at start (FINN's simulator loads Vivado's "
                        "libraries into this process): export LD_LIBRARY_PATH=$XILINX_VIVADO/lib/lnx64.o:"
                        "$LD_LIBRARY_PATH before running" % home)


def check(finn_board: str, fifo: str, finn_deps, environ: Optional[Mapping[str, str]] = None,
          startup_ld: Optional[str] = None) -> Tuple[Dict, List[str]]:
    """(what was found, one line per missing piece). Runs ``vivado -version`` / ``vitis_hls -version``."""
    environ = os.environ if environ is None else environ
    finn_deps = Path(finn_deps)
    found: Dict = {"finn_deps": str(finn_deps), "fifo": fifo}
    problems: List[str] = []
    _vivado_checks(environ, found, problems)
    if not (finn_deps / "finn-hlslib" / "bnn-library.h").exists():
        problems.append("finn-hlslib not found in %s (FINN's HLS layers include it): %s" % (finn_deps, DEPS_HINT))
    part = board_part(finn_board)
    found["board_part"] = part
    if part is None:
        problems.append("FINN's Zynq shell sets no board part for %s: choose another --board" % finn_board)
    else:
        repos = [finn_deps / "board_files"]
        if environ.get("XILINX_VIVADO"):
            repos.append(Path(environ["XILINX_VIVADO"]) / "data" / "boards" / "board_files")
        if not board_files_found(part, repos):
            problems.append("board files for %s (%s) not found in %s: %s"
                            % (finn_board, part, repos[0], DEPS_HINT))
    _fifo_checks(fifo, finn_deps, environ,
                 environ.get("LD_LIBRARY_PATH", "") if startup_ld is None else startup_ld, problems)
    return found, problems


def preflight(finn_board: str, fifo: str, finn_deps, environ: Optional[Mapping[str, str]] = None,
              startup_ld: Optional[str] = None) -> Dict:
    """:func:`check`; any problem raises one BnnError whose lines (``pre-flight: ...``, joined by
    ``\\nerror: `` so the CLI prints each as an ``error:`` line) are the problems."""
    found, problems = check(finn_board, fifo, finn_deps, environ, startup_ld)
    if problems:
        raise BnnError("\nerror: ".join("pre-flight: " + p for p in problems))
    return found
