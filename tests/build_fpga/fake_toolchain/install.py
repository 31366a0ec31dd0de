"""Lay out a fake Xilinx install and a fake FINN deps folder for the fake toolchain (tests only).

``install(root, version)`` makes ``<root>/Vivado/<version>/bin/vivado`` and
``<root>/Vitis_HLS/<version>/bin/{vitis_hls,vitis-run}`` (links to ``bin/`` beside this file) and the
library folders FINN's launcher puts on LD_LIBRARY_PATH, and returns the variables a sourced
settings64.sh would set. ``deps(root, board_parts)`` makes a FINN deps folder holding finn-hlslib's
header names and a board.xml per board part, as ``finn deps update`` would (content: placeholders);
``vivado_board_store`` puts one where a Vivado install ships AMD's boards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Iterable

HERE = Path(__file__).resolve().parent
# finn-hlslib's top-level headers (github.com/Xilinx/finn-hlslib): FINN's generated HLS includes them.
HLSLIB_HEADERS = (
    "activations.hpp bnn-library.h concat.hpp convlayer.h crop.hpp dma.h eltwise.hpp flatten.hpp interpret.hpp "
    "mac.hpp maxpool.h mmv.hpp mvau.hpp normalize.hpp pool.hpp slidingwindow.h split.hpp streamtools.h "
    "tmrcheck.hpp upsample.hpp utils.hpp vvau.hpp weights.hpp").split()


def install(root, version: str = "2024.2") -> Dict[str, str]:
    root = Path(root)
    vivado, hls = root / "Vivado" / version, root / "Vitis_HLS" / version
    for home, tools in ((vivado, ("vivado",)), (hls, ("vitis_hls", "vitis-run"))):
        (home / "bin").mkdir(parents=True, exist_ok=True)
        for tool in tools:
            link = home / "bin" / tool
            if not link.exists():
                link.symlink_to(HERE / "bin" / tool)
    (vivado / "lib" / "lnx64.o").mkdir(parents=True, exist_ok=True)
    (vivado / "data" / "xsim" / "include").mkdir(parents=True, exist_ok=True)
    (vivado / "data" / "xsim" / "include" / "xsi.h").write_text("/* placeholder of Vivado's xsi.h */\n")
    (hls / "lnx64" / "tools" / "fpo_v7_1").mkdir(parents=True, exist_ok=True)
    # the fake Vivado lays out its .hwh with tests/host/finn_hwh.py, in this Python
    return {"XILINX_VIVADO": str(vivado), "XILINX_HLS": str(hls), "FAKE_TOOLCHAIN_PYTHON": sys.executable,
            "PATH": os.pathsep.join([str(vivado / "bin"), str(hls / "bin"), os.environ.get("PATH", "")])}


def deps(root, board_parts: Iterable[str]) -> Path:
    root = Path(root)
    lib = root / "finn-hlslib"
    lib.mkdir(parents=True, exist_ok=True)
    for name in HLSLIB_HEADERS:
        (lib / name).write_text("// placeholder of finn-hlslib's %s (fake toolchain)\n" % name)
    for bp in board_parts:
        vendor, name, _, version = bp.split(":")
        board_xml(root / "board_files" / name / version, vendor, name, version)
    return root


def board_xml(folder, vendor: str, name: str, version: str) -> Path:
    """A board.xml as board vendors lay it out (``<board vendor= name=>`` and ``<file_version>``; the
    components, pins and presets Vivado also reads are left out)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "board.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<board schema_version="2.2" vendor="%s" name="%s" display_name="%s" preset_file="preset.xml">\n'
        "  <file_version>%s</file_version>\n  <description>%s (fake toolchain)</description>\n</board>\n"
        % (vendor, name, name, version, name))
    return folder / "board.xml"


def vivado_board_store(xilinx_vivado, vendor_dir: str, vendor: str, name: str, version: str) -> Path:
    """A board in Vivado's installed XilinxBoardStore, where Vivado ships ZCU104's and KV260's board files
    (``data/xhub/boards/XilinxBoardStore/boards/<Vendor>/<board>/<version>/board.xml``)."""
    store = Path(xilinx_vivado) / "data" / "xhub" / "boards" / "XilinxBoardStore" / "boards"
    return board_xml(store / vendor_dir / name / version, vendor, name, version)
