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

from .errors import BnnError

__all__ = ["PYNQ_BOARDS", "BOARD_FILES", "pynq_board", "our_board"]

# PYNQ's board name -> ours (build_fpga/boards.py; tests/host/test_boards.py keeps the two in step)
PYNQ_BOARDS = {
    "Pynq-Z1": "pynq-z1",
    "Pynq-Z2": "pynq-z2",
    "Ultra96": "ultra96",
    "ZCU104": "zcu104",
    "KV260": "kv260",
}
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
    for pynq_name, ours in PYNQ_BOARDS.items():
        if key in (pynq_name.lower(), ours):
            return ours
    raise BnnError("board %r is not one this flow builds for (PYNQ names them %s; ours: %s); name the board with "
                   "--board, or skip the check with --board ''"
                   % (str(name), ", ".join(PYNQ_BOARDS), ", ".join(PYNQ_BOARDS.values())))
