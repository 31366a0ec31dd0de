"""A procedurally generated image dataset: the embedded default for the demo and the tests.

A class is a combination of three primitives: an object shape, a fill pattern and a colour scheme
("ring-stripes-warm"). Each image shows one large object of its class over a random background,
with the nuisances a real dataset has: position, scale, aspect, rotation (of the shape and its
pattern), smaller distractor objects of other shapes, pixel noise, brightness and contrast.

Two disjoint pools of classes: ``synthetic`` (pretraining, 24 classes by default) and
``synthetic-transfer`` (10). Transfer classes are new combinations of the same primitives, so
features learnt on ``synthetic`` help but the classes themselves were never seen. The option
``class_set=k`` takes the k-th block of ``num_classes`` classes of a pool: disjoint tasks of one
generator (the demo's Flowers-, Birds- and Indoor-like tasks), each with nuisances of its own.

Image ``i`` of a split is a pure function of (dataset name, split, i, seed, image size): no files,
no state. Only ``Generator.random`` and ``standard_normal`` are drawn (their streams have not
changed since numpy 1.17), and the class sets come from sha256, not from numpy, so a board with an
old numpy renders the same classes and, up to float rounding, the same pixels.
"""

import colorsys
import hashlib
import itertools
import math

import numpy as np

from .errors import BnnError
from .imagedataset import ImageDataset

GENERATOR_VERSION = 1  # bump when rendering changes: it is part of every image id, so caches rebuild

SHAPES = ("disk", "ring", "square", "triangle", "cross", "star", "crescent", "bar")
TEXTURES = ("plain", "stripes", "checks", "dots", "zigzag")
# (hue degrees, saturation, value) of the main and the secondary colour of each scheme.
COLOURS = {
    "warm": ((0, 0.85, 0.90), (50, 0.85, 0.95)),
    "cool": ((220, 0.80, 0.85), (185, 0.70, 0.90)),
    "forest": ((120, 0.75, 0.75), (75, 0.60, 0.40)),
    "violet": ((290, 0.70, 0.80), (320, 0.25, 0.95)),
    "mono": ((0, 0.0, 0.92), (0, 0.0, 0.12)),
    "sunset": ((25, 0.90, 0.95), (265, 0.70, 0.55)),
}
COLOUR_NAMES = tuple(COLOURS)

DEFAULTS = {
    "synthetic": {"num_classes": 24, "n_train_per_class": 500, "n_test_per_class": 100},
    "synthetic-transfer": {"num_classes": 10, "n_train_per_class": 120, "n_test_per_class": 60},
}
OPTION_NAMES = ("num_classes", "n_train_per_class", "n_test_per_class", "image_size", "seed", "class_set")
DEFAULT_IMAGE_SIZE = 48
_SET_ID = {"synthetic": 0, "synthetic-transfer": 1}
_SPLIT_ID = {"train": 0, "test": 1}
_SALT = 0x5EED_B11  # separates these streams from any other use of the same user seed


# --- class sets ------------------------------------------------------------------------------------

def _all_combos():
    """Every (shape, texture, colour) triple, in a fixed pseudo-random order (sha256, not numpy RNG)."""
    combos = list(itertools.product(SHAPES, TEXTURES, COLOUR_NAMES))
    return sorted(combos, key=lambda c: hashlib.sha256("-".join(c).encode()).hexdigest())


def _balanced_pick(pool, n):
    """Take ``n`` combos from ``pool``, each time the one whose primitives are least used so far.

    Counts are weighted by the number of values of each primitive, so every shape, texture and
    colour ends up used about equally often; ties go to the earlier combo in ``pool``.
    """
    sizes = (len(SHAPES), len(TEXTURES), len(COLOUR_NAMES))
    counts = [dict.fromkeys(v, 0) for v in (SHAPES, TEXTURES, COLOUR_NAMES)]
    chosen, left = [], list(pool)
    for _ in range(n):
        scores = [sorted((counts[k][c[k]] * sizes[k] for k in range(3)), reverse=True) for c in left]
        best = left.pop(scores.index(min(scores)))
        for k in range(3):
            counts[k][best[k]] += 1
        chosen.append(best)
    return chosen


def class_pool(name):
    """Every combination ``synthetic`` (the first half of the fixed order) or ``synthetic-transfer`` may draw."""
    if name not in _SET_ID:
        raise BnnError("dataset %r: not a synthetic dataset" % (name,))
    combos = _all_combos()
    half = len(combos) // 2
    return combos[:half] if name == "synthetic" else combos[half:]


def class_combos(name, num_classes=None, class_set=0):
    """The (shape, texture, colour) of each class of ``synthetic`` or ``synthetic-transfer``.

    Pretraining draws from the first half of the fixed order, transfer from the second half, so
    the two sets are disjoint whatever their sizes. ``class_set`` k is the k-th block of
    ``num_classes`` balanced picks: blocks are disjoint, and block 0 is the set of that size.
    """
    n = DEFAULTS[name]["num_classes"] if num_classes is None else int(num_classes)
    pool = class_pool(name)
    if not 2 <= n <= len(pool):
        raise BnnError("%s: num_classes=%d must be between 2 and %d" % (name, n, len(pool)))
    if n * (class_set + 1) > len(pool):
        raise BnnError("%s: class_set=%d of %d classes needs %d combinations, the pool has %d"
                       % (name, class_set, n, n * (class_set + 1), len(pool)))
    return _balanced_pick(pool, n * (class_set + 1))[n * class_set:]


def class_name(combo):
    return "-".join(combo)


# --- rendering -------------------------------------------------------------------------------------

_GRIDS = {}
_REACH = 1.2  # every shape lies within this radius of its centre (object units): the triangle's tip is at 1.1


def _grid(size):
    if size not in _GRIDS:
        c = np.arange(size, dtype=np.float32) + 0.5
        _GRIDS[size] = (c[None, :].repeat(size, 0), c[:, None].repeat(size, 1))
    return _GRIDS[size]


def _sdf(shape, u, v):
    """Approximate signed distance (object units, radius ~1, negative inside) of each shape."""
    if shape in ("disk", "ring", "star"):
        r = np.sqrt(u * u + v * v)
    if shape == "disk":
        return r - 1.0
    if shape == "ring":
        return np.abs(r - 0.7) - 0.3
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82
    if shape == "triangle":
        # Equilateral, inradius 0.55, centred on its centroid.
        d = -v
        for a in (math.pi / 6, 5 * math.pi / 6):
            d = np.maximum(d, math.cos(a) * u + math.sin(a) * v)
        return d - 0.55
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - 0.33), np.maximum(au - 0.33, av - 1.0))
    if shape == "star":
        lobes = 0.5 + 0.5 * np.cos(5.0 * np.arctan2(v, u))
        return r - (0.5 + 0.5 * lobes * lobes)
    if shape == "crescent":
        return np.maximum(np.sqrt(u * u + v * v) - 1.0, 0.8 - np.sqrt((u - 0.45) ** 2 + v * v))
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.05, np.abs(v) - 0.38)
    raise ValueError(shape)


def _texture(texture, u, v, period, phase, px):
    """Mixing weight of the secondary colour in [0, 1], edges about one pixel wide.

    ``px`` is the number of pixels per object unit (the anti-aliasing scale).
    """
    if texture == "plain":
        return None
    k = 2 * math.pi / period
    sharp = px / k  # turns a unit-slope sine into a ~1 pixel transition
    if texture == "stripes":
        s = np.sin(k * u + phase)
    elif texture == "checks":
        s = np.sin(k * u + phase) * np.sin(k * v + phase) * 2.0
    elif texture == "zigzag":
        tri = np.abs((u / period + phase) % 1.0 - 0.5)
        s = np.sin(k * (v + 0.6 * period * tri))
    elif texture == "dots":
        fu = (u / period + phase) % 1.0 - 0.5
        fv = (v / period) % 1.0 - 0.5
        return np.clip(0.5 + (0.3 - np.sqrt(fu * fu + fv * fv)) * period * px, 0.0, 1.0)
    else:
        raise ValueError(texture)
    return np.clip(0.5 + s * sharp, 0.0, 1.0)


def _jitter_colour(hsv, r):
    """An RGB colour near ``hsv``; ``r`` supplies three uniforms."""
    h, s, v = hsv
    h = (h + (r[0] - 0.5) * 20.0) / 360.0 % 1.0
    s = min(1.0, s * (0.8 + 0.3 * r[1]))
    v = min(1.0, v * (0.8 + 0.3 * r[2]))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _random_colour(r):
    return np.array(colorsys.hsv_to_rgb(r[0], 0.2 + 0.8 * r[1], 0.25 + 0.75 * r[2]), dtype=np.float32)


def _frame(xx, yy, cx, cy, radius, angle, aspect):
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (c * dx + s * dy) / (radius * aspect)
    v = (-s * dx + c * dy) * (aspect / radius)
    return u, v


def _box(cx, cy, reach, size):
    """Row and column slices covering every pixel within ``reach`` of (cx, cy), clipped to the image.

    Shapes only touch pixels inside it (alpha is exactly 0 beyond half a pixel outside the shape),
    so drawing there gives the same image at a fraction of the cost.
    """
    r = reach + 2.0
    y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _paint(img, alpha, colour, mix=None, colour2=None):
    """Alpha-composite a flat (or two-colour mixed) layer over ``img`` in place."""
    if mix is None:
        layer = colour
    else:
        layer = colour + mix[..., None] * (colour2 - colour)
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * layer


def render(combo, rng, size=DEFAULT_IMAGE_SIZE):
    """One size x size x 3 uint8 image of the class ``combo`` with nuisances drawn from ``rng``."""
    shape, texture, colour = combo
    xx, yy = _grid(size)
    u01 = rng.random(48)  # every scalar this image needs (46 at most), drawn at once
    k = iter(u01.tolist())

    # Background: a dim, weakly saturated colour with a linear gradient.
    base = np.array(colorsys.hsv_to_rgb(next(k), 0.35 * next(k), 0.2 + 0.6 * next(k)), dtype=np.float32)
    ga = 2 * math.pi * next(k)
    amp = 0.3 * next(k)
    ramp = ((math.cos(ga) * xx + math.sin(ga) * yy) / size - 0.5) * amp
    img = base[None, None, :] + ramp[..., None]

    # Distractors: 1-3 smaller objects of other shapes, drawn first so the main object covers them.
    others = [s for s in SHAPES if s != shape]
    for _ in range(1 + int(next(k) * 3)):
        dshape = others[int(next(k) * len(others)) % len(others)]
        rad = size * (0.09 + 0.08 * next(k))
        cx, cy = size * next(k), size * next(k)
        box = _box(cx, cy, _REACH * rad, size)
        u, v = _frame(xx[box], yy[box], cx, cy, rad, 2 * math.pi * next(k), 1.0)
        alpha = np.clip(0.5 - _sdf(dshape, u, v) * rad, 0.0, 1.0)
        _paint(img[box], alpha, _random_colour([next(k), next(k), next(k)]))

    # The object of the class.
    rad = size * (0.25 + 0.13 * next(k))
    margin = 0.75 * rad
    cx = margin + (size - 2 * margin) * next(k)
    cy = margin + (size - 2 * margin) * next(k)
    aspect = 0.85 + 0.3 * next(k)
    box = _box(cx, cy, _REACH * rad * max(aspect, 1.0 / aspect), size)
    u, v = _frame(xx[box], yy[box], cx, cy, rad, 2 * math.pi * next(k), aspect)
    alpha = np.clip(0.5 - _sdf(shape, u, v) * rad, 0.0, 1.0)
    c1 = _jitter_colour(COLOURS[colour][0], [next(k), next(k), next(k)])
    c2 = _jitter_colour(COLOURS[colour][1], [next(k), next(k), next(k)])
    mix = _texture(texture, u, v, 0.45 + 0.15 * next(k), 2 * math.pi * next(k), rad)
    _paint(img[box], alpha, c1, mix, c2)

    # Camera: contrast, brightness, sensor noise.
    contrast = 0.7 + 0.55 * next(k)
    brightness = 0.24 * (next(k) - 0.5)
    sigma = 0.01 + 0.04 * next(k)
    img -= 0.5
    img *= contrast
    img += 0.5 + brightness
    img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)


def image_rng(name, split, i, seed=0, class_set=0):
    """The generator that draws image ``i``'s nuisances: one independent stream per image.

    Class set 0 keeps the stream it had before class sets existed (cached images stay valid).
    """
    key = [_SALT, int(seed), _SET_ID[name], _SPLIT_ID[split], int(i)]
    return np.random.default_rng(key + [int(class_set)] if class_set else key)


# --- dataset ---------------------------------------------------------------------------------------

class GeneratedDataset(ImageDataset):
    """Images rendered on demand: image ``i`` has label ``i % num_classes`` and is a pure function of
    (name, split, i, seed, image size).

    A subclass names its ``defaults`` (per dataset name), its ``version`` (part of every image id, so
    caches rebuild when rendering changes) and how a class is chosen (``class_keys``), named
    (``class_id``) and drawn (``render_image``).
    """

    defaults = {}
    version = 0

    def __init__(self, name, split, num_classes=None, n_train_per_class=None, n_test_per_class=None,
                 image_size=DEFAULT_IMAGE_SIZE, seed=0, class_set=0):
        d = self.defaults[name]
        num_classes = d["num_classes"] if num_classes is None else num_classes
        per_class = {"train": n_train_per_class if n_train_per_class is not None else d["n_train_per_class"],
                     "test": n_test_per_class if n_test_per_class is not None else d["n_test_per_class"]}[split]
        for key, val, low in (("num_classes", num_classes, 2), ("n_%s_per_class" % split, per_class, 1),
                              ("image_size", image_size, 8), ("seed", seed, 0), ("class_set", class_set, 0)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < low:
                raise BnnError("%s: option %s=%r must be an integer >= %d" % (name, key, val, low))
        self.seed = int(seed)
        self.class_set = int(class_set)
        self.keys = self.class_keys(name, int(num_classes))
        self.native_size = int(image_size)
        count = int(per_class) * int(num_classes)
        labels = np.arange(count, dtype=np.int64) % int(num_classes)
        options = {"num_classes": int(num_classes), "n_%s_per_class" % split: int(per_class),
                   "image_size": self.native_size, "seed": self.seed}
        if self.class_set:  # absent at 0: the options, and so the caches' keys, of earlier runs hold
            options["class_set"] = self.class_set
        super().__init__(name, split, None, [self.class_id(k) for k in self.keys], None, labels, None, options)

    def class_keys(self, name, num_classes):
        raise NotImplementedError

    def class_id(self, key):
        raise NotImplementedError

    def render_image(self, key, i):
        raise NotImplementedError

    def source(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return "%s://%s/%d?seed=%d&size=%d&v=%d%s" % (self.name, self.split, i, self.seed, self.native_size,
                                                     self.version,
                                                     "&set=%d" % self.class_set if self.class_set else "")

    def load(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.render_image(self.keys[int(self.labels[i])], i)

    def load_batch(self, indices):
        """NHWC uint8 images for ``indices`` (a convenience for numpy consumers)."""
        out = np.empty((len(indices), self.native_size, self.native_size, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            out[j] = self.load(i)
        return out


class SyntheticDataset(GeneratedDataset):
    """``synthetic`` / ``synthetic-transfer``: objects of (shape, texture, colour) classes."""

    defaults = DEFAULTS
    version = GENERATOR_VERSION

    def class_keys(self, name, num_classes):
        return class_combos(name, num_classes, self.class_set)

    def class_id(self, key):
        return class_name(key)

    def render_image(self, key, i):
        return render(key, image_rng(self.name, self.split, i, self.seed, self.class_set), self.native_size)


def open_synthetic(name, split, **options):
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise BnnError("dataset %s: unknown option(s) %s (valid: %s)"
                       % (name, ", ".join(unknown), ", ".join(OPTION_NAMES)))
    return SyntheticDataset(name, split, **options)
