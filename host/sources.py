"""Where live frames come from: a USB camera through OpenCV (``CameraSource``), the image files of a
folder (``FolderSource``, also the fallback when there is no camera or no OpenCV), or frames handed
over in memory (``FramesSource``, e.g. uploads); ``open_source`` picks one and says in one line why it
fell back. Every frame is checked (``check_frame``): a wrong dtype, channel count or size, or a camera
that stops delivering, is one ``BnnError`` line. numpy only at module level: OpenCV and PIL are
imported when used.
"""

import os

import numpy as np

from .errors import BnnError, ImageError

__all__ = ["FrameError", "SourceUnavailable", "FrameSource", "CameraSource", "FolderSource", "FramesSource",
           "open_source", "check_frame", "check_class_name", "decode_frame"]

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


def check_class_name(name):
    """A class name that is also a safe folder name: stripped, non-empty, no path separators."""
    if not isinstance(name, str):
        raise BnnError("class name: expected text, got %s" % type(name).__name__)
    text = name.strip()
    if not text or text.startswith(".") or any(c in text for c in "/\\\0") or len(text) > 100:
        raise BnnError("class name %r: use 1 to 100 characters, no '/', '\\' and no leading '.'" % name)
    return text
