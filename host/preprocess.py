"""The paper's preprocessing on uint8 HWC RGB images, shared by training and the board.

Resize so that the longest side is ``resize_longest`` (256 for a 224 input), zero-pad where the
crop does not fit, then a random crop plus horizontal flip for training or a center crop for
evaluation. Everything stays uint8: the network takes raw camera bytes.

The ``*_resized`` variants take an image whose longest side is already ``resize_longest`` (the
decoded-image cache stores images that way); the full transforms are resize + those.
"""

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np

from .errors import BnnError, ImageError
from .inputs import regular_file

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Preprocess:
    """Geometry of the preprocessing: crop size and the longest side after resizing."""

    input_size: int
    resize_longest: int

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise BnnError("preprocess: %s must be a positive integer, got %r" % (f.name, v))

    @classmethod
    def for_input_size(cls, n: int) -> "Preprocess":
        """The paper's ratio scaled to ``n``: 224 -> 256, 32 -> 37."""
        return cls(int(n), int(round(n * 256 / 224)))

    def to_dict(self) -> Dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess") -> "Preprocess":
        """Inverse of to_dict; ``where`` (a file name) prefixes the error message."""
        if not isinstance(d, dict):
            raise BnnError("%s: expected a dict with the preprocessing parameters, got %r" % (where, type(d).__name__))
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        extra = sorted(set(d) - names)
        if missing or extra:
            raise BnnError("%s: preprocessing keys do not match (missing %s, unexpected %s)" % (where, missing, extra))
        return cls(**{k: d[k] for k in names})


# Refused before decoding: a few KB of PNG can declare 13000 x 13000 pixels (507 MB as RGB), all of a
# Pynq-Z2's memory (host.boards.SMALLEST_BOARD_BYTES). 40 megapixels (120 MB as RGB, under a quarter of
# it) admits every camera photo.
MAX_PIXELS = 40_000_000
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def decode_image(path: PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file into HWC uint8 RGB; raise ImageError when it cannot be read.

    The size comes from the header first: an image of more than ``max_pixels`` is refused
    without being decoded. 16-bit and 32-bit grey levels are scaled to 8 bits (not clipped). An EXIF
    orientation is applied, so a phone's portrait photo is upright as any viewer shows it.
    """
    from PIL import Image

    return _decode(lambda: Image.open(regular_file(path)), path, max_pixels)


def decode_image_bytes(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`decode_image` of the bytes of an image file (an upload), named ``name`` in errors."""
    import io

    from PIL import Image

    return _decode(lambda: Image.open(io.BytesIO(bytes(data))), name, max_pixels)


def _decode(open_image: Any, name: PathLike, max_pixels: int) -> np.ndarray:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning (89 Mpx) is above MAX_PIXELS, which is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = open_image()
        with im:
            w, h = im.size  # from the header: Image.open does not decode
            if w * h > max_pixels:
                raise ImageError("%s: image of %d x %d pixels is over the limit of %d megapixels (it would take "
                                 "%d MB decoded)" % (name, w, h, max_pixels // 1_000_000, w * h * 3 >> 20))
            # load() forces the full decode: a truncated file fails here, not later in a worker.
            im.load()
            if im.mode in _HIGH_DEPTH:
                arr = _grey_to_rgb8(np.asarray(im), im.mode, name)
            else:
                arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
            arr = _upright(arr, _orientation(im))
    except ImageError:
        raise
    except Exception as e:  # PIL raises many types for malformed files (OSError, SyntaxError, struct.error, ...)
        raise ImageError("%s: cannot decode image (%s)" % (name, _reason(e))) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError("%s: cannot decode image (unexpected shape %s)" % (name, arr.shape))
    return np.ascontiguousarray(arr)


# EXIF orientation (tag 0x0112; phones write it instead of rotating the pixels) -> the array the viewer
# shows, as PIL's ImageOps.exif_transpose, but on the array: exact, and the same for every pixel mode.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block does not make the pixels unreadable
        return 1


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    turn = _UPRIGHT.get(orientation)
    return arr if turn is None else turn(arr)


def _grey_to_rgb8(a: np.ndarray, mode: str, path: PathLike) -> np.ndarray:
    """Grey levels of a high-depth mode to 8 bits: PIL's own convert clips them at 255 instead."""
    if mode == "F":
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ImageError("%s: floating-point image with values outside [0, 1]; save it with 8 or 16 bits" % path)
        g = np.rint(a * 255)
    elif mode == "I" and a.min() >= 0 and a.max() <= 255:
        g = a  # 8-bit data in a 32-bit container
    elif a.min() >= 0 and a.max() <= 65535:
        g = a.astype(np.uint32) >> 8  # 16-bit data (PIL reads 16-bit PNG/TIFF as I;16 or I)
    else:
        raise ImageError("%s: %s image with values outside 0..65535 is not supported" % (path, mode))
    g = g.astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _reason(e: BaseException) -> str:
    if str(e).startswith("cannot identify image file"):  # its next words name a path or a BytesIO's repr
        return "not an image format PIL reads"
    msg = str(e).strip().splitlines()
    return "%s: %s" % (type(e).__name__, msg[0]) if msg else type(e).__name__


def _check_image(img: Any) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = "%s %s" % (img.dtype, img.shape) if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError("expected an HWC uint8 RGB image, got %s" % desc)
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError("empty image of shape %s" % (img.shape,))


def resized_shape(h: int, w: int, longest: int) -> Tuple[int, int]:
    """(height, width) after scaling so that the longer side is ``longest`` (aspect kept, >= 1)."""
    scale = longest / float(max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_longest_side(img: np.ndarray, longest: int) -> np.ndarray:
    """Scale (up or down) so that max(h, w) == longest, with PIL's bilinear filter."""
    _check_image(img)
    h, w = img.shape[:2]
    nh, nw = resized_shape(h, w, longest)
    if (nh, nw) == (h, w):
        return img
    from PIL import Image

    # Image.BILINEAR, not Image.Resampling (Pillow >= 9.1): a PYNQ image's Pillow may be older
    out = Image.fromarray(img, "RGB").resize((nw, nh), Image.BILINEAR)  # type: ignore[attr-defined]
    return np.asarray(out, dtype=np.uint8)


def pad_to_min(img: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad symmetrically (extra pixel at the bottom/right) so both sides are >= size."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return img
    pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="constant")


def _check_crop(img: np.ndarray, size: int) -> None:
    if img.shape[0] < size or img.shape[1] < size:
        raise ValueError("image of %dx%d is smaller than the %d crop; pad it first" % (img.shape[:2] + (size,)))


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window (top-left bias when the margin is odd)."""
    _check_crop(img, size)
    top = (img.shape[0] - size) // 2
    left = (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def random_crop_flip(img: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """A uniformly placed size x size window, mirrored left-right with probability 0.5 when ``flip``."""
    _check_crop(img, size)
    top = int(rng.integers(0, img.shape[0] - size + 1))
    left = int(rng.integers(0, img.shape[1] - size + 1))
    out = img[top:top + size, left:left + size]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def eval_transform_resized(img: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Pad + center crop of an image already resized to pp.resize_longest."""
    _check_image(img)
    return np.ascontiguousarray(center_crop(pad_to_min(img, pp.input_size), pp.input_size))


def train_transform_resized(img: np.ndarray, pp: Preprocess, rng: np.random.Generator,
                            flip: bool = True) -> np.ndarray:
    """Pad + random crop (+ flip) of an image already resized to pp.resize_longest."""
    _check_image(img)
    return np.ascontiguousarray(random_crop_flip(pad_to_min(img, pp.input_size), pp.input_size, rng, flip))


def eval_transform(img: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Decoded image -> input_size x input_size x 3 uint8 (resize, pad, center crop)."""
    return eval_transform_resized(resize_longest_side(img, pp.resize_longest), pp)


def train_transform(img: np.ndarray, pp: Preprocess, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """Decoded image -> input_size x input_size x 3 uint8 (resize, pad, random crop (+ flip))."""
    return train_transform_resized(resize_longest_side(img, pp.resize_longest), pp, rng, flip)


def prepare_batch(images: Sequence[np.ndarray], pp: Preprocess) -> np.ndarray:
    """Evaluation preprocessing of a list of decoded HWC images into one NHWC uint8 batch."""
    n = pp.input_size
    out = np.empty((len(images), n, n, 3), dtype=np.uint8)
    for k, img in enumerate(images):
        out[k] = eval_transform(img, pp)
    return out


def check_batch(x: Any, pp: Preprocess, name: str = "images") -> np.ndarray:
    """Raise BnnError unless ``x`` is an NHWC uint8 batch of pp.input_size RGB images."""
    n = pp.input_size
    want = "uint8 NHWC batch (N, %d, %d, 3)" % (n, n)
    if not isinstance(x, np.ndarray):
        raise BnnError("%s: expected a numpy %s, got %s" % (name, want, type(x).__name__))
    if x.dtype != np.uint8:
        raise BnnError("%s: expected dtype uint8 (raw pixels 0..255), got %s" % (name, x.dtype))
    if x.ndim != 4:
        raise BnnError("%s: expected a %s, got rank %d shape %s" % (name, want, x.ndim, x.shape))
    if x.shape[3] != 3:
        raise BnnError("%s: expected 3 channels (RGB, channels last), got %d in shape %s" % (name, x.shape[3], x.shape))
    if x.shape[1:3] != (n, n):
        raise BnnError("%s: expected %dx%d images, got %dx%d (preprocess with resize %d + crop %d)"
                       % (name, n, n, x.shape[1], x.shape[2], pp.resize_longest, n))
    return x


__all__ = [
    "Preprocess", "decode_image", "resized_shape", "resize_longest_side", "pad_to_min",
    "center_crop", "random_crop_flip", "eval_transform", "train_transform", "eval_transform_resized",
    "train_transform_resized", "prepare_batch", "check_batch",
]
