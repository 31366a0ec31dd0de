"""Teach the board live: camera frames -> binary features -> software head, timed per stage.

The loop behind ``notebooks/teach.ipynb`` and ``python -m host live`` / ``python -m host teach``:

- a ``FrameSource`` gives RGB frames: a USB camera through OpenCV (``CameraSource``), the image
  files of a folder (``FolderSource``, also the fallback when there is no camera or no OpenCV), or
  frames handed over in memory (``FramesSource``, e.g. uploads); ``open_source`` picks one and
  says in one line why it fell back;
- ``LivePipeline`` turns a frame into packed features and top-k classes, timing each stage
  (``STAGES``: capture, preprocess, features, pack, head);
- ``ExampleStore`` keeps the packed features of every captured example per class, so adding a
  class or more examples never extracts the earlier ones again; with a folder it also writes each
  captured frame there (``<folder>/<class>/<n>.png``, resized to the network's resize side, so
  re-extracting it gives the same features), a ``folder`` dataset that ``python -m host fit`` and
  ``live_classify.ipynb`` read and that a new session picks up again;
- ``Teacher`` ties them together: add classes, capture examples, train the head, classify live.

A bad frame (wrong dtype, channels or size), a camera that stops delivering or a class without
examples raises ``BnnError`` with one line; nothing captured before is lost. numpy only at module
level: OpenCV, PIL and the heads' trainer are imported when used.
"""

import os
import time
from collections import deque

import numpy as np

from .errors import BnnError, ImageError
from .features import pack_features, packed_width

__all__ = ["STAGES", "FrameError", "SourceUnavailable", "FrameSource", "CameraSource", "FolderSource",
           "FramesSource", "open_source", "check_frame", "decode_frame", "StageTimer", "LivePipeline",
           "LiveResult", "ExampleStore", "Teacher", "check_class_name", "teach_config"]

STAGES = ("capture", "preprocess", "features", "pack", "head")
# host-side stages: everything but waiting for the camera
HOST_STAGES = STAGES[1:]
MAX_FRAME_SIDE = 8192  # larger than any USB camera; a bigger array is a mistake, not a frame


class FrameError(ImageError):
    """A frame that cannot be used (no frame, wrong dtype, channels or size)."""


class SourceUnavailable(BnnError):
    """A frame source that cannot be opened (no OpenCV, no camera, camera busy, empty folder)."""


# ------------------------------------------------------------------------------------------- frames

def check_frame(frame, where="frame", bgr=False):
    """The frame as a contiguous HxWx3 uint8 RGB array; FrameError for anything that is not a frame.

    Grey (HxW or HxWx1) frames are repeated to three channels and an alpha channel is dropped,
    as any viewer would show them; ``bgr`` frames (OpenCV's order) are turned to RGB.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError("%s: expected an image array, got %s" % (where, type(frame).__name__))
    if frame.dtype != np.uint8:
        raise FrameError("%s: expected 8-bit pixels (uint8), got %s of shape %s" % (where, frame.dtype, frame.shape))
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise FrameError("%s: expected an HxW grey, HxWx3 colour or HxWx4 image, got shape %s" % (where, frame.shape))
    h, w = frame.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_FRAME_SIDE:
        raise FrameError("%s: frame of %dx%d pixels (expected 1 to %d per side)" % (where, w, h, MAX_FRAME_SIDE))
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if bgr:
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)


def decode_frame(data, name="upload"):
    """Decode the bytes of an image file (an upload) into an RGB frame; ImageError when unreadable."""
    from .preprocess import decode_image_bytes

    return check_frame(decode_image_bytes(data, name), name)


class FrameSource:
    """Gives frames with ``read()`` (HxWx3 uint8 RGB); ``for_class(name)`` is where that class's
    examples come from (the same camera, or a class sub-folder); ``close()`` releases it.

    ``max_failures``: unusable frames in a row after which a live loop gives up on the source.
    """

    name = "frames"
    max_failures = 3

    def read(self):
        raise NotImplementedError

    def for_class(self, name):
        return self

    def close(self):
        """Release the device; the source can be opened again afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CameraSource(FrameSource):
    """A USB camera through OpenCV's ``VideoCapture(index)``.

    ``warmup`` frames are read and dropped on opening: many webcams deliver dark frames while
    their exposure settles. ``cv2`` may be given (tests); by default it is imported here.
    """

    def __init__(self, index=0, warmup=5, cv2=None):
        if cv2 is None:
            try:
                import cv2
            except ImportError:
                raise SourceUnavailable("OpenCV (cv2) is not installed") from None
        self.index = int(index)
        self.name = "camera %d" % self.index
        self._cv2 = cv2
        self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceUnavailable("camera %d: not found, or in use by another program" % self.index)
        for _ in range(int(warmup)):
            self._cap.read()
        self.frames = 0

    def read(self):
        ok, frame = self._cap.read() if self._cap is not None else (False, None)
        if not ok or frame is None:
            raise FrameError("%s: returned no frame (unplugged, or taken by another program?)" % self.name)
        self.frames += 1
        return check_frame(frame, "%s, frame %d" % (self.name, self.frames), bgr=True)

    def close(self):
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource(FrameSource):
    """The image files under a folder as frames, in a fixed shuffled order, round and round.

    Shuffled (seeded), so a folder of class sub-folders shows every class early. A file that
    cannot be decoded raises ImageError for that frame; the next ``read`` goes on with the next file.
    """

    def __init__(self, folder, seed=0):
        from .datasets import list_images

        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        if not os.path.isdir(self.folder):
            raise SourceUnavailable("%s: %s" % (self.folder, "not a folder" if os.path.exists(self.folder)
                                                else "folder not found"))
        files = list_images(self.folder)
        if not files:
            raise SourceUnavailable("%s: no image files in the folder" % self.folder)
        order = np.random.default_rng(seed).permutation(len(files))
        self.files = [files[i] for i in order]
        self.max_failures = len(self.files)  # every file once: a few broken ones are skipped, not fatal
        self.name = "folder %s" % self.folder
        self._next = 0

    def read(self):
        from .preprocess import decode_image

        path = self.files[self._next % len(self.files)]
        self._next += 1
        return check_frame(decode_image(path), path)

    def for_class(self, name):
        sub = os.path.join(self.folder, check_class_name(name))
        if not os.path.isdir(sub):
            raise SourceUnavailable("%s: no folder for class %r (put its images in %s)" % (self.folder, name, sub))
        return FolderSource(sub)


class FramesSource(FrameSource):
    """Frames already in memory (decoded uploads, a test's frames), round and round."""

    def __init__(self, frames, name="uploaded frames"):
        self.frames = [check_frame(f, "%s, frame %d" % (name, k + 1)) for k, f in enumerate(frames)]
        if not self.frames:
            raise SourceUnavailable("%s: no frames" % name)
        self.name = name
        self._next = 0

    def read(self):
        frame = self.frames[self._next % len(self.frames)]
        self._next += 1
        return frame


def open_source(camera=0, folder=None, cv2=None):
    """``(source, note)``: camera ``camera`` when it opens, else the image folder ``folder``.

    ``camera`` None or negative skips the camera. ``note`` is one line saying what is used and,
    after a fallback, why. Raises SourceUnavailable when neither works.
    """
    if camera is not None and int(camera) >= 0:
        try:
            src = CameraSource(camera, cv2=cv2)
            return src, "frames from %s" % src.name
        except SourceUnavailable as e:
            reason = str(e)
    else:
        reason = "camera disabled"
    if folder is None:
        raise SourceUnavailable("%s, and no folder of images to use instead" % reason)
    src = FolderSource(folder)
    return src, "%s: frames from the images in %s instead" % (reason, src.folder)


# ------------------------------------------------------------------------------------------- the loop

class StageTimer:
    """Milliseconds per stage over the last ``window`` frames, and frames per second of the loop."""

    def __init__(self, window=30):
        self.window = int(window)
        self._frames = deque(maxlen=self.window)  # (end time, {stage: seconds})
        self.count = 0

    def add(self, seconds, end=None):
        self._frames.append((time.perf_counter() if end is None else end, dict(seconds)))
        self.count += 1

    def ms(self):
        """{stage: mean ms} over the window (stages never timed are left out)."""
        out = {}
        for s in STAGES:
            vals = [sec[s] for _, sec in self._frames if s in sec]
            if vals:
                out[s] = 1e3 * sum(vals) / len(vals)
        return out

    def fps(self):
        """Frames per second between the first and last frame of the window; None before two frames."""
        if len(self._frames) < 2:
            return None
        span = self._frames[-1][0] - self._frames[0][0]
        return (len(self._frames) - 1) / span if span > 0 else None

    def host_fps(self):
        """The rate the host side alone could sustain: 1000 / (ms of every stage but capture)."""
        ms = self.ms()
        total = sum(ms.get(s, 0.0) for s in HOST_STAGES)
        return 1e3 / total if total > 0 else None


class LiveResult:
    """One classified frame: the frame, top-k class indices and probabilities, seconds per stage."""

    def __init__(self, frame, top, prob, seconds):
        self.frame, self.top, self.prob, self.seconds = frame, top, prob, seconds


class LivePipeline:
    """Frame -> preprocess -> features (accelerator or emulator) -> packed bits -> head, timed.

    "features" is the backend's whole call: on the board that includes packing the image into the
    accelerator's input stream and unpacking its output (``host.packing``); "pack" is the +-1
    features to bits, the form the example store and the head read.
    """

    def __init__(self, bundle, backend, window=30):
        from .preprocess import Preprocess

        self.bundle = bundle
        self.backend = backend
        self.pp = Preprocess.from_dict(bundle.preprocess, where=bundle.root)
        self.timer = StageTimer(window)

    def features(self, frames, seconds=None):
        """Packed features (N, bytes) of RGB frames; adds the stages' seconds to ``seconds``."""
        from .preprocess import eval_transform

        seconds = {} if seconds is None else seconds
        t0 = time.perf_counter()
        x = np.stack([eval_transform(f, self.pp) for f in frames])
        t1 = time.perf_counter()
        pm1 = self.backend.extract(x, batch_size=len(frames))
        t2 = time.perf_counter()
        packed = pack_features(pm1)
        t3 = time.perf_counter()
        for stage, s in (("preprocess", t1 - t0), ("features", t2 - t1), ("pack", t3 - t2)):
            seconds[stage] = seconds.get(stage, 0.0) + s
        return packed

    def step(self, source, head, k=3):
        """Read one frame from ``source`` and classify it: a LiveResult, also counted in ``timer``."""
        from .heads import predict_topk

        t0 = time.perf_counter()
        frame = source.read()
        seconds = {"capture": time.perf_counter() - t0}
        packed = self.features([frame], seconds)
        t1 = time.perf_counter()
        top, prob = predict_topk(head, packed, k=k)
        end = time.perf_counter()
        seconds["head"] = end - t1
        self.timer.add(seconds, end)
        return LiveResult(frame, top[0], prob[0], seconds)


# ------------------------------------------------------------------------------------------- examples

def check_class_name(name):
    """A class name that is also a safe folder name: stripped, non-empty, no path separators."""
    if not isinstance(name, str):
        raise BnnError("class name: expected text, got %s" % type(name).__name__)
    text = name.strip()
    if not text or text.startswith(".") or any(c in text for c in "/\\\0") or len(text) > 100:
        raise BnnError("class name %r: use 1 to 100 characters, no '/', '\\' and no leading '.'" % name)
    return text


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
