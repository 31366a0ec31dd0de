"""Opening ``.npz`` files that may come from anywhere, without trusting their sizes.

``np.load`` allocates each member from the shape in its ``.npy`` header before reading the data,
so a 1 MB file whose header claims a billion elements costs gigabytes before it is refused.
``open_npz`` reads only the zip directory and each member's header first and refuses member
names it does not expect, object arrays, headers that claim more data than the member holds,
and totals beyond ``max_bytes``. Like ``np.load`` it raises ValueError (or OSError,
zipfile.BadZipFile) for a bad file, so callers wrap it in their own "<file>: not a readable ..."
"""

import zipfile

import numpy as np

from .boards import SMALLEST_BOARD_BYTES
from .inputs import regular_file

DEFAULT_MAX_BYTES = SMALLEST_BOARD_BYTES // 2  # no head or weights file of ours comes near this


def npy_header(f):
    """(shape, fortran order, dtype, data offset) of the ``.npy`` file ``f`` (binary, at its start), from its
    header alone: nothing the header claims is allocated."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return shape, fortran, dtype, f.tell()


def _member_header(zf, info):
    with zf.open(info) as f:
        shape, _, dtype, offset = npy_header(f)
        return shape, dtype, offset


def check_npz(path, names=None, max_bytes=DEFAULT_MAX_BYTES):
    """Raise ValueError unless ``path`` is an npz whose members are plain arrays of believable size.

    ``names``: the member names (without ``.npy``) allowed, or None for any. ``max_bytes``: the
    most the arrays may take in memory together (None: no limit beyond the file's own size).
    """
    total = 0
    with zipfile.ZipFile(regular_file(path)) as zf:
        seen = set()
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or "/" in name or name in seen or (names is not None and name not in names):
                raise ValueError("unexpected member %r" % info.filename)
            seen.add(name)
            total += info.file_size
            if max_bytes is not None and total > max_bytes:
                raise ValueError("members declare %d bytes, more than the %d such a file may hold" % (total, max_bytes))
            try:
                shape, dtype, header = _member_header(zf, info)
            except EOFError as e:
                raise ValueError("member %s is truncated (%s)" % (info.filename, e)) from None
            if dtype.hasobject:
                raise ValueError("member %s holds Python objects; refused" % info.filename)
            need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if need != info.file_size - header:
                raise ValueError("member %s declares %s %s (%d bytes) but holds %d bytes of data"
                                 % (info.filename, dtype, tuple(shape), need, info.file_size - header))


def open_npz(path, names=None, max_bytes=DEFAULT_MAX_BYTES):
    """``np.load(path, allow_pickle=False)`` after ``check_npz``: use it as a context manager."""
    check_npz(path, names, max_bytes)
    return np.load(path, allow_pickle=False)
