"""Teaching the board live: capture examples per class, keep their features, train the software head.

- ``ExampleStore`` keeps the packed features of every captured example per class, so adding a
  class or more examples never extracts the earlier ones again; with a folder it also writes each
  captured frame there (``<folder>/<class>/<n>.png``, resized to the network's resize side, so
  re-extracting it gives the same features), a ``folder`` dataset that ``python -m host fit`` and
  ``live_classify.ipynb`` read and that a new session picks up again;
- ``Teacher`` ties a frame source (``host.sources``), the live loop (``host.live``) and the store
  together: add classes, capture examples, train the head, classify live.

A class without examples raises ``BnnError`` with one line; nothing captured before is lost. numpy
only at module level: PIL and the heads' trainer are imported when used.
"""

import os
import time

import numpy as np

from .errors import BnnError, ImageError
from .features import packed_width
from .live import LivePipeline
from .sources import FrameError, check_class_name, check_frame

__all__ = ["ExampleStore", "Teacher", "teach_config"]



# ------------------------------------------------------------------------------------------- examples

class ExampleStore:
    """The packed features of the captured examples, per class, growing without re-extraction.

    With a ``folder``, each added frame is also written as ``<folder>/<class>/<n>.png`` resized so
    its longest side is ``resize_longest`` (the preprocessing's own first step: the file gives the
    same features again); ``load`` reads such a folder back.
    """

    def __init__(self, width, folder=None, resize_longest=None):
        self.width = int(width)
        self.folder = None if folder is None else os.path.abspath(os.path.expanduser(os.fspath(folder)))
        self.resize_longest = resize_longest
        self.classes = []
        self._rows = {}

    def add_class(self, name):
        name = check_class_name(name)
        if name not in self._rows:
            # sorted, as the folder dataset of the saved frames lists them: a head taught here and
            # one fitted on that folder later have the same class order
            self.classes = sorted(self.classes + [name])
            self._rows[name] = []
        return name

    def remove_class(self, name):
        """Forget a class in this session; its files (if any) stay in the folder."""
        if name not in self._rows:
            raise BnnError("class %r: no such class (classes: %s)" % (name, ", ".join(self.classes) or "none"))
        self.classes.remove(name)
        del self._rows[name]

    def add(self, name, packed, frames=None):
        """Append rows of packed features to class ``name`` (created if new); save their frames."""
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_width(self.width):
            raise BnnError("class %r: expected packed features (N, %d) uint8, got %s %s"
                           % (name, packed_width(self.width), packed.dtype, packed.shape))
        name = self.add_class(name)
        if self.folder is not None and frames is not None:
            for frame in frames:
                self._write(name, frame)
        self._rows[name].extend(np.array(row) for row in packed)

    def _write(self, name, frame):
        from PIL import Image

        from .atomic import atomic_path
        from .preprocess import resize_longest_side

        folder = os.path.join(self.folder, name)
        os.makedirs(folder, exist_ok=True)
        taken = [int(f[:-4]) for f in os.listdir(folder) if f.endswith(".png") and f[:-4].isdigit()]
        path = os.path.join(folder, "%05d.png" % (max(taken, default=0) + 1))
        img = resize_longest_side(frame, self.resize_longest) if self.resize_longest else frame
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                Image.fromarray(img, "RGB").save(f, format="PNG")

    def rows(self, name):
        """Packed features (n, bytes) of class ``name``'s examples, in the order they were added."""
        if name not in self._rows:
            raise BnnError("class %r: no such class (classes: %s)" % (name, ", ".join(self.classes) or "none"))
        return np.stack(self._rows[name]) if self._rows[name] else np.zeros((0, packed_width(self.width)), np.uint8)

    def counts(self):
        return {c: len(self._rows[c]) for c in self.classes}

    def __len__(self):
        return sum(len(r) for r in self._rows.values())

    def arrays(self):
        """(packed uint8 (N, bytes), labels int64 (N,)) of every example, labels indexing ``classes``."""
        self.check_trainable()
        packed = np.stack([row for c in self.classes for row in self._rows[c]])
        labels = np.concatenate([np.full(len(self._rows[c]), k, np.int64) for k, c in enumerate(self.classes)])
        return packed, labels

    def check_trainable(self):
        if len(self.classes) < 2:
            raise BnnError("need at least 2 classes to train, have %d (%s)"
                           % (len(self.classes), ", ".join(self.classes) or "none"))
        empty = [c for c in self.classes if not self._rows[c]]
        if empty:
            raise BnnError("class %r has no examples yet: capture some, or remove the class" % empty[0])

    def load(self, bundle, backend):
        """Read the examples saved in ``folder`` by an earlier session (one extraction); returns their number."""
        from .datasets import list_subdirs, open_dataset
        from .extract import extract_dataset

        if self.folder is None or not os.path.isdir(self.folder) or not list_subdirs(self.folder):
            return 0
        ds = open_dataset("folder", "train", self.folder, test_fraction=0.0)
        feats = extract_dataset(bundle, backend, ds, batch_size=None, cache_dir=None, progress=False, workers=1)
        for k, name in enumerate(ds.classes):
            self.add(name, feats.packed[feats.labels == k])
        return len(feats)


def teach_config(counts, variant="float", seed=0):
    """The heads' training settings for a few captured examples per class.

    Early stopping needs held-out examples: with at least 5 per class a fifth of each class is held
    out (and then used again, ``refit``); with fewer, every example trains for a fixed 30 epochs.
    """
    from .heads import HeadConfig

    if min(counts) >= 5:
        return HeadConfig(variant=variant, seed=seed, val_fraction=0.2, refit=True)
    return HeadConfig(variant=variant, seed=seed, val_fraction=0.0, epochs=30)


class Teacher:
    """A teaching session: a source of frames, the examples per class, the head trained on them.

    ``source`` may be None (no camera, no folder): examples then come from ``add_frames`` only.
    """

    def __init__(self, bundle, backend, source, examples_dir=None, variant="float", top=3):
        self.bundle = bundle
        self.pipeline = LivePipeline(bundle, backend)
        self.source = source
        self.store = ExampleStore(bundle.feature_width, examples_dir, self.pipeline.pp.resize_longest)
        self.variant = variant
        self.top = int(top)
        self.head = None
        self.history = None
        self.last_frame = None
        self.train_seconds = None
        self.resumed = self.store.load(bundle, backend)

    def add_class(self, name):
        return self.store.add_class(name)

    def capture(self, name, k):
        """Capture ``k`` frames of class ``name``; returns one line saying what was added.

        A frame that cannot be read or used is skipped and counted; what was captured stays.
        """
        name = self.store.add_class(name)
        k = int(k)
        if k < 1:
            raise BnnError("frames per class: must be a positive number, got %d" % k)
        source = self._source().for_class(name)
        frames, problems = [], []
        for _ in range(k):
            try:
                frames.append(source.read())
            except ImageError as e:
                problems.append(str(e))
        return self._add(name, frames, problems, k)

    def add_frames(self, name, frames):
        """Add frames given in memory (uploads) to class ``name``; one line as ``capture``."""
        name = self.store.add_class(name)
        good, problems = [], []
        for k, f in enumerate(frames):
            try:
                good.append(check_frame(f, "%s, frame %d" % (name, k + 1)))
            except FrameError as e:
                problems.append(str(e))
        return self._add(name, good, problems, len(frames))

    def _add(self, name, frames, problems, asked):
        if frames:
            self.store.add(name, self.pipeline.features(frames), frames)
            self.last_frame = frames[-1]
        line = "%s: %d of %d frames added, %d examples in all" % (name, len(frames), asked,
                                                                  self.store.counts()[name])
        if problems:
            line += "; skipped %d (%s)" % (len(problems), problems[0])
        return line

    def train(self, cfg=None):
        """Fit the head on every example captured so far; returns it (also kept as ``head``)."""
        from .heads import fit_head

        packed, labels = self.store.arrays()
        counts = np.bincount(labels, minlength=len(self.store.classes))
        cfg = cfg if cfg is not None else teach_config(counts, self.variant)
        meta = dict(self.bundle.head_meta(), examples=self.store.counts())
        if self.store.folder is not None:
            # what live_classify.ipynb and `python -m host fit --dataset folder` read the examples back with
            meta["dataset"] = {"name": "folder", "data_dir": self.store.folder, "options": {}}
        t0 = time.perf_counter()
        self.head, self.history = fit_head(packed, labels, list(self.store.classes), cfg, progress=False,
                                           feature_width=self.store.width, meta=meta)
        self.train_seconds = time.perf_counter() - t0
        return self.head

    def save_head(self, path):
        from .heads import save_head

        if self.head is None:
            raise BnnError("%s: no head to save yet: train first" % path)
        save_head(path, self.head)
        return path

    def _source(self):
        if self.source is None:
            raise BnnError("no camera and no folder of images: add examples as uploaded files instead")
        return self.source

    def step(self):
        """Classify the next frame of the source with the trained head: a LiveResult."""
        if self.head is None:
            raise BnnError("no head yet: capture examples of at least 2 classes and train first")
        return self.pipeline.step(self._source(), self.head, self.top)
