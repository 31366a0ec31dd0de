"""The confusion-matrix picture ``host eval`` writes.

matplotlib draws it when it is installed (PYNQ images ship it), through its object-oriented API
and the Agg canvas, so that neither pyplot's global state nor a notebook's backend is touched.
Without matplotlib a plain heat map (one square per cell, no text) is written with zlib, and a
warning says so: the command still produces its PNG on a minimal install.

Every PNG this flow writes (here, and the plots of train, build_fpga, demo and bench) carries a
``Software: bnn-transfer`` text chunk (:data:`PNG_METADATA`): that is how a command knows a PNG at its
output path is its own to replace (:func:`check_replaceable_png`), and refuses anyone else's.
"""

import os
import struct
import sys
import zlib

import numpy as np

from .atomic import atomic_path, write_bytes_atomic
from .errors import BnnError
from .inputs import regular_file
from .manifest import check_replaceable_file

__all__ = ["save_confusion_png", "png_bytes", "PNG_METADATA", "check_replaceable_png"]

PNG_METADATA = {"Software": "bnn-transfer"}  # matplotlib's savefig(metadata=...) writes it as a tEXt chunk

MAX_LABELED_CLASSES = 40  # beyond this, tick labels are unreadable at any sensible figure size
MAX_ANNOTATED_CLASSES = 15  # counts written into the cells up to this many classes


def _row_normalised(cm):
    totals = cm.sum(axis=1, keepdims=True)
    return cm / np.maximum(totals, 1)


def save_confusion_png(path, cm, class_names=None, title=None):
    """Write the confusion matrix ``cm`` (rows = true class, columns = predicted) as a PNG.

    Cells are coloured by the row-normalised rate (the recall on the diagonal), so rare classes
    are as visible as frequent ones. Class names label the axes up to 40 classes. Returns
    "matplotlib" or "plain" (the fallback), the writer that was used.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1 or cm.dtype.kind not in "iu":
        raise BnnError("%s: confusion matrix must be a square integer array, got %s %r" % (path, cm.dtype, cm.shape))
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise BnnError("%s: %d class names for a %dx%d confusion matrix" % (path, len(class_names), *cm.shape))
    try:
        import matplotlib  # noqa: F401  (only probes availability; the figure uses the Agg canvas)
    except ImportError:
        print("warning: matplotlib is not installed, so %s is a plain heat map without labels "
              "(pip install matplotlib for the labelled plot)" % path, file=sys.stderr)
        write_bytes_atomic(path, png_bytes(_heat_map(_row_normalised(cm))))
        return "plain"
    _draw(path, cm, class_names, title)
    return "matplotlib"


def _draw(path, cm, class_names, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = cm.shape[0]
    rates = _row_normalised(cm)
    side = float(min(16.0, max(6.5, 3.0 + 0.3 * c)))
    fig = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and c <= MAX_LABELED_CLASSES:
        size = 9 if c <= 15 else 7 if c <= 25 else 5
        ticks = np.arange(c)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels([str(n) for n in class_names], rotation=90, fontsize=size)
        ax.set_yticklabels([str(n) for n in class_names], fontsize=size)
    if c <= MAX_ANNOTATED_CLASSES:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    n = int(cm.sum())
    acc = float(np.trace(cm)) / n if n else float("nan")
    ax.set_title("%s%d images, top-1 %.1f%%" % (title + "\n" if title else "", n, 100 * acc), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=100, metadata=PNG_METADATA)


def _heat_map(rates, max_side=512):
    """RGB image of ``rates`` in [0, 1]: white (0) to dark blue (1), square cells."""
    c = rates.shape[0]
    cell = max(1, min(16, max_side // c))
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = (white + rates[..., None] * (blue - white) + 0.5).astype(np.uint8)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(rgb):
    """Encode an HxWx3 uint8 image as PNG (8-bit RGB, no filtering) with the standard library."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError("png_bytes: expected an HxWx3 image, got shape %r" % (rgb.shape,))
    h, w = rgb.shape[:2]
    # every scanline starts with its filter type, 0 = none
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    text = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in PNG_METADATA.items())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + text + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


def _png_text(path, max_chunks=64):
    """The tEXt chunks before the image data of the PNG at ``path`` (BnnError if it is not a PNG)."""
    found = {}
    try:
        with open(regular_file(path), "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise BnnError("%s: not a PNG" % path)
            for _ in range(max_chunks):
                head = f.read(8)
                if len(head) < 8:
                    break
                size, tag = struct.unpack(">I4s", head)
                if tag in (b"IDAT", b"IEND"):
                    break
                data = f.read(size + 4)[:size] if size <= 1 << 16 else b""
                if tag == b"tEXt" and b"\0" in data:
                    key, _, value = data.partition(b"\0")
                    found[key.decode("latin-1")] = value.decode("latin-1")
    except OSError as e:
        raise BnnError("%s: cannot read it (%s)" % (path, e)) from None
    return found


def _own_png(path):
    if any(_png_text(path).get(k) != v for k, v in PNG_METADATA.items()):
        raise BnnError("%s: not a PNG this flow wrote" % path)


def check_replaceable_png(path):
    """Refuse (BnnError, before any work) to write the PNG ``path`` over a file this flow did not write,
    or into a folder it cannot write to."""
    check_replaceable_file(path, _own_png, "PNG")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and not os.access(folder, os.W_OK):
        raise BnnError("%s: cannot write there (the folder is not writable); choose another path" % path)
