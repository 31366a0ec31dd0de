"""The PYNQ board this runs on, and our names for PYNQ's boards.

PYNQ names a board after the folder its image was built from, and puts that name in three places:
the device tree (``/proc/device-tree/chosen/pynq_board``; PYNQ's sdbuild passes the folder name as
``PYNQ_BOARDNAME`` to the device tree recipe), ``/etc/xocl.txt`` (sdbuild's xrt package) and
``$BOARD``, which ``/etc/profile.d/boardname.sh`` reads from the device tree in login shells and
Jupyter's start script inherits. A plain ``sudo`` drops ``$BOARD``, so the files are read too.
The names (checked in the PYNQ 2.7, 3.0.1 and 3.1 sources):

- ``Pynq-Z1``, ``Pynq-Z2``, ``ZCU104``: Xilinx/PYNQ ``boards/<name>/<name>.spec``;
- ``Ultra96``: Avnet/Ultra96-PYNQ builds its V1 and V2 images from one folder ``Ultra96``
  (``build96.sh`` links ``specs/Ultra96_v2.spec`` or ``_v1.spec`` to ``Ultra96/Ultra96.spec``), so a
  V1 image says ``Ultra96`` too; our ``ultra96`` is the V2;
- ``KV260``: Xilinx/Kria-PYNQ's ``install.sh -b KV260`` exports ``BOARD=KV260`` in
  ``/etc/profile.d/pynq_venv.sh`` and writes it to ``/etc/xocl.txt`` (no device tree entry).

``pynq``'s own test for running on a board is the device tree file (``pynq.ps.ON_TARGET``).
"""

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import BnnError

__all__ = ["BOARDS", "BOARD_FILES", "SMALLEST_BOARD_BYTES", "BoardRecord", "our_board", "pynq_board", "pynq_names",
           "register_board"]


@dataclass(frozen=True)
class BoardRecord:
    """What is known of a board without FINN: build_fpga resolves it, with FINN's tables, into its ``Board``.

    - ``name``: ours (``--board``); ``pynq_name``: the name its PYNQ image gives it (module docstring).
    - ``finn_board``: FINN's board name (``pynq_part_map``, ``ZynqBuild``); ``finn_platform``: the key of
      ``finn.util.platforms.platforms`` whose resources it has, or None where FINN has none, and then
      ``resources`` ``(LUT, FF, BRAM18, URAM, DSP)`` from ``resources_source``.
    - ``clock_mhz``: the default ``--clock-mhz`` (build_fpga/boards.py says why).
    - ``ddr_bytes_per_s``: peak PS DDR bandwidth (None: not stated, the shell's port bounds it), from
      ``ddr_source``.
    """

    name: str
    pynq_name: str
    finn_board: str
    finn_platform: Optional[str]
    clock_mhz: float
    ddr_bytes_per_s: Optional[float]
    ddr_source: str
    resources: Optional[Tuple[int, int, int, int, int]] = None
    resources_source: str = ""


# The least memory any of the boards has (Pynq-Z1/Z2: 512 MB for Linux, Python and the DMA buffers): what one
# input batch, one decoded image or one npz file may take is a fraction of it, on a PC too (a bundle runs on both)
SMALLEST_BOARD_BYTES = 512 << 20

# How to add a board: one BoardRecord in the list below (its FINN board name from finn.util.basic.pynq_part_map,
# its PYNQ name from its image). Nothing else names boards: build_fpga's --board choices, its resolved Board,
# and host's $BOARD check all read this table.
BOARDS: Dict[str, BoardRecord] = {}


def register_board(record: BoardRecord) -> BoardRecord:
    if record.name in BOARDS or record.pynq_name.lower() in (b.pynq_name.lower() for b in BOARDS.values()):
        raise BnnError("board %r (PYNQ: %r) is registered already" % (record.name, record.pynq_name))
    if record.finn_platform is None and record.resources is None:
        raise BnnError("board %r: FINN has no platform for it, so its resources must be given" % record.name)
    BOARDS[record.name] = record
    return record


_ZYNQ7_DDR = "16-bit DDR3 at 1050 Mb/s"
for _record in (
    BoardRecord("pynq-z1", "Pynq-Z1", "Pynq-Z1", "Pynq-Z1", 100.0, 2.1e9,
                _ZYNQ7_DDR + " (Digilent PYNQ-Z1 reference manual)"),
    BoardRecord("pynq-z2", "Pynq-Z2", "Pynq-Z2", "Pynq-Z2", 100.0, 2.1e9, _ZYNQ7_DDR + " (TUL PYNQ-Z2 user manual)"),
    BoardRecord("ultra96", "Ultra96", "Ultra96-V2", "Ultra96", 150.0, None,
                "32-bit LPDDR4 (Avnet Ultra96-V2 HW user guide); transfer rate not stated"),
    BoardRecord("zcu104", "ZCU104", "ZCU104", "ZCU104", 150.0, 19.2e9,
                "64-bit PS DDR4 (AMD UG1267) at 2400 Mb/s (the PS's DDR4 maximum, AMD DS925)"),
    BoardRecord("kv260", "KV260", "KV260_SOM", None, 150.0, 19.2e9,
                "64-bit DDR4 at 2400 Mb/s (AMD DS987, K26 SOM data sheet)",
                (117120, 234240, 288, 64, 1248), "AMD DS987 (Kria K26 SOM data sheet)"),
):
    register_board(_record)


def pynq_names() -> Dict[str, str]:
    """PYNQ's board name -> ours, for every registered board."""
    return {b.pynq_name: b.name for b in BOARDS.values()}


# Where a PYNQ image keeps its board name when $BOARD is not set, in the order read
BOARD_FILES = ("/proc/device-tree/chosen/pynq_board", "/etc/xocl.txt")


def _first_name(path):
    try:
        with open(path, "rb") as f:
            data = f.read(256)
    except OSError:
        return None
    # the device tree holds a NUL-terminated string, xocl.txt a line
    name = data.split(b"\0")[0].decode("utf-8", "replace").strip()
    return name or None


def pynq_board():
    """PYNQ's name of the board this runs on ($BOARD, else the files above), or None off a PYNQ board.

    PYNQ's fallback name ``Unknown`` (an image whose device tree names no board) counts as a board.
    """
    name = os.environ.get("BOARD", "").strip()
    if name:
        return name
    for path in BOARD_FILES:
        name = _first_name(path)
        if name:
            return name
    return None


def our_board(name):
    """Our name of a board given PYNQ's spelling or ours, case-insensitively; BnnError for another board."""
    key = str(name).strip().lower()
    names = pynq_names()
    for pynq_name, ours in names.items():
        if key in (pynq_name.lower(), ours):
            return ours
    raise BnnError("board %r is not one this flow builds for (PYNQ names them %s; ours: %s); name the board with "
                   "--board, or skip the check with --board ''"
                   % (str(name), ", ".join(names), ", ".join(names.values())))
