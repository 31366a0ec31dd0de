"""The head file: one ``.npz`` read with ``allow_pickle=False`` (format in ``host/heads/__init__.py``).

``python -m export head`` writes the same file through ``save_head``.
"""

import json
import os
import zipfile

import numpy as np

from ..atomic import save_npz_atomic
from ..errors import BnnError
from ..inputs import loads_json
from ..npzfile import open_npz
from .head import _PARAMS, VARIANTS, Head, _check_classes, _check_params

HEAD_FORMAT = "bnn-transfer/head"
HEAD_VERSION = 1
_HEADER_KEYS = ("format", "version", "variant", "classes", "feature_width", "meta")


def save_head(path, head):
    """Write ``head`` as an .npz (format in the module docstring), atomically."""
    if not isinstance(head, Head):
        raise BnnError("%s: save_head needs a Head, got %s" % (path, type(head).__name__))
    try:
        meta = json.dumps(head.meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise BnnError("%s: head meta is not JSON-serialisable (%s)" % (path, e)) from None
    params = _check_params(head.variant, head.num_classes, head.feature_width, head.params, str(path), strict=False)
    arrays = {
        "format": np.array(HEAD_FORMAT),
        "version": np.array(HEAD_VERSION, dtype=np.int64),
        "variant": np.array(head.variant),
        "classes": np.array(head.classes, dtype=np.str_),
        "feature_width": np.array(head.feature_width, dtype=np.int64),
        "meta": np.array(meta),
    }
    arrays.update(params)
    save_npz_atomic(path, arrays)


def _scalar(data, key, kind, path):
    a = data[key]
    if a.shape != () or a.dtype.kind != kind:
        raise BnnError("%s: %r must be a scalar of kind %r, got %s %r" % (path, key, kind, a.dtype, a.shape))
    return a.item()


def load_head(path):
    """Read and validate a head file; any problem raises BnnError("<path>: ...")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BnnError("%s: head file not found" % path)
    try:
        with open_npz(path) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise BnnError("%s: not a readable head file (%s)" % (path, e)) from None
    if "format" not in data or data["format"].shape != () or str(data["format"]) != HEAD_FORMAT:
        raise BnnError("%s: not a bnn-transfer head file" % path)
    missing = [k for k in _HEADER_KEYS if k not in data]
    if missing:
        raise BnnError("%s: head file lacks %s" % (path, ", ".join(missing)))
    version = _scalar(data, "version", "i", path)
    if version != HEAD_VERSION:
        raise BnnError("%s: head file version %s, this code reads version %d" % (path, version, HEAD_VERSION))
    variant = _scalar(data, "variant", "U", path)
    width = _scalar(data, "feature_width", "i", path)
    classes = data["classes"]
    if classes.ndim != 1 or classes.dtype.kind != "U":
        raise BnnError("%s: classes must be a 1-D string array, got %s %r" % (path, classes.dtype, classes.shape))
    try:
        meta = loads_json(_scalar(data, "meta", "U", path))
    except ValueError:
        raise BnnError("%s: head meta is not valid JSON" % path) from None
    if not isinstance(meta, dict):
        raise BnnError("%s: head meta must be a JSON object" % path)
    if variant not in _PARAMS:
        raise BnnError("%s: unknown head variant %r (expected one of %s)" % (path, variant, ", ".join(VARIANTS)))
    if width < 1:
        raise BnnError("%s: feature width must be positive, got %d" % (path, width))
    classes = _check_classes(classes.tolist(), path)
    params = {k: v for k, v in data.items() if k not in _HEADER_KEYS}
    params = _check_params(variant, len(classes), width, params, path, strict=True)
    return Head(variant=variant, classes=classes, feature_width=width, params=params, meta=meta)
