"""``ImageDataset``: the list of (image source, label) pairs of one split that every reader returns.

Its own module so that the file readers (``datasets.py``) and the generated datasets
(``synthetic.py``) both build on it without importing each other.
"""

import hashlib
import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .errors import BnnError
from .preprocess import decode_image

__all__ = ["ImageDataset", "printable"]


def printable(name: str) -> str:
    """A file-system name as text a terminal, a JSON file or a plot can show (undecodable bytes as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _file_stamp(path: str) -> bytes:
    try:
        st = os.stat(path)
    except OSError:  # gone or unreadable: skipped at extraction, and counted
        return b"-\0"
    return b"%d:%d\0" % (st.st_size, st.st_mtime_ns)


class ImageDataset:
    """An indexable list of (image source, label) pairs of one split.

    ``source(i)`` is a file path (or a synthetic id), ``load(i)`` the decoded HWC uint8 RGB image.
    ``classes`` are the class identifiers (folder names, wnids, ...), ``class_names`` their
    human-readable names (the same strings unless the dataset ships a mapping).
    """

    native_size = None  # fixed image side of generated datasets; None for files of any size

    def __init__(self, name: str, split: str, root: Optional[str], classes: Sequence[str],
                 sources: Optional[Sequence[str]], labels: Any, class_names: Optional[Sequence[str]] = None,
                 options: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.split = split
        self.root = root
        self.classes = list(classes)
        # names for people (plots, tables): a folder name that is not UTF-8 must not break them
        self.class_names = list(class_names) if class_names is not None else [printable(c) for c in self.classes]
        # Subclasses that generate their sources (synthetic) pass None and override source().
        self._sources = list(sources) if sources is not None else None
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.options = dict(options or {})
        self._fingerprint: Optional[str] = None
        if self._sources is not None and len(self._sources) != len(self.labels):
            raise ValueError("%d sources but %d labels" % (len(self._sources), len(self.labels)))
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise BnnError("%s: labels outside 0..%d" % (root or name, len(self.classes) - 1))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def source(self, i: int) -> str:
        if self._sources is None:
            raise NotImplementedError("%s generates its images: it overrides source() and load()" % type(self).__name__)
        return self._sources[i]

    def load(self, i: int) -> np.ndarray:
        return decode_image(self.source(i))

    def fingerprint(self) -> str:
        """sha256 over name, split, classes, every source (for files: with its size and modification
        time, so an image edited or relabelled in place is extracted again) and label: the key of
        derived caches."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps([self.name, self.split, self.classes]).encode("utf-8", "surrogateescape"))
            for i in range(len(self)):
                # surrogateescape: file names that are not valid UTF-8 still hash (and differ).
                h.update(self.source(i).encode("utf-8", "surrogateescape") + b"\0")
                if self._sources is not None:
                    h.update(_file_stamp(self._sources[i]))
            h.update(self.labels.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        """What a manifest records about its input data."""
        return {
            "name": self.name,
            "split": self.split,
            "root": self.root,
            "count": len(self),
            "num_classes": len(self.classes),
            "options": dict(self.options),
            "fingerprint": self.fingerprint(),
        }

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def __repr__(self) -> str:
        return "ImageDataset(%r, %r, %d images, %d classes)" % (self.name, self.split, len(self), len(self.classes))
