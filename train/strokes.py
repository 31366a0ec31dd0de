"""``strokes``: pen strokes on paper, generated pretraining data for ink-on-paper images.

``synthetic`` teaches colour, texture and object shape; a backbone pretrained on it alone does not
transfer to scans of handwriting (issue 15: on scikit-learn's digits its frozen features were
worse than a random backbone's). ``strokes`` adds what scans have: dark lines on light paper,
curves, junctions and stroke ends, often seen at a low resolution and scaled up.

A class is a fixed random glyph of 2-4 quadratic Bezier strokes (a later stroke often starts
where the one before ended, as a pen does); the glyphs are random curves, not letters or digits.
Each image draws its class's glyph with the nuisances of writing and scanning: a small rotation,
scale, aspect and shift, the stroke width, a wobble of every control point, paper and ink colours
(light ink on dark paper in 30% of the images), sensor noise, and in half the images a resolution
of 8-24 pixels scaled up bilinearly. Image ``i`` is a pure function of (split, i, seed, size).
"""

import colorsys
import math

import numpy as np

from bnn_transfer.host.synthetic import DEFAULT_IMAGE_SIZE, GeneratedDataset

DEFAULTS = {"strokes": {"num_classes": 100, "n_train_per_class": 150, "n_test_per_class": 10}}
_SALT = 0x57_0E5  # separates these streams from synthetic's and from any other use of the same seed
_SPLIT_ID = {"train": 0, "test": 1}


def glyph(c):
    """Class ``c``'s strokes: a list of (3, 2) control points in [-0.8, 0.8]^2."""
    r = np.random.default_rng([_SALT, 1, c])
    strokes = []
    for _ in range(2 + int(r.random() * 3)):
        p = r.random((3, 2)) * 1.6 - 0.8
        if strokes and r.random() < 0.6:
            p[0] = strokes[-1][2]
        strokes.append(p)
    return strokes


def _bezier(p, n=12):
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]


def _distance(q, a, b):
    """Distance of each point of ``q`` (M, 2) to the nearest of the segments ``a[k]``-``b[k]``."""
    ab = b - a
    aq = q[:, None, :] - a[None]
    t = np.clip((aq * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9)[None], 0.0, 1.0)
    d = aq - t[..., None] * ab[None]
    return np.sqrt((d * d).sum(-1)).min(1)


def render(strokes, rng, size=DEFAULT_IMAGE_SIZE):
    """One size x size x 3 uint8 image of the glyph ``strokes`` with nuisances drawn from ``rng``."""
    u = rng.random(16)
    angle, scale, aspect = (u[0] - 0.5) * 0.6, 0.7 + 0.3 * u[1], 0.8 + 0.4 * u[2]
    shift = (np.array([u[3], u[4]]) - 0.5) * 0.4
    width = 0.07 + 0.18 * u[5]
    res = int(8 + u[7] * 16) if u[6] < 0.5 else size
    g = (np.arange(res) + 0.5) / res * 2 - 1
    xx, yy = np.meshgrid(g, g)
    q = np.stack([xx.ravel(), yy.ravel()], 1) - shift
    c, s = math.cos(angle), math.sin(angle)
    q = np.stack([(c * q[:, 0] + s * q[:, 1]) / (scale * aspect), (-s * q[:, 0] + c * q[:, 1]) / (scale / aspect)], 1)
    d = np.full(len(q), 9.0)
    for p in strokes:
        pts = _bezier(p + rng.standard_normal((3, 2)) * 0.07)
        d = np.minimum(d, _distance(q, pts[:-1], pts[1:]))
    alpha = np.clip(0.5 - (d - width) * (res * scale / 2.0), 0.0, 1.0).reshape(res, res, 1)
    paper = np.array(colorsys.hsv_to_rgb(u[8], 0.4 * u[9], 0.5 + 0.5 * u[10]), np.float32)
    ink = np.array(colorsys.hsv_to_rgb(rng.random(), 0.6 * rng.random(), 0.5 * rng.random()), np.float32)
    if u[11] < 0.3:
        paper, ink = ink, paper
    img = paper + alpha * (ink - paper)
    img = img + (0.01 + 0.04 * u[12]) * rng.standard_normal(img.shape).astype(np.float32)
    img = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if res != size:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img


class StrokesDataset(GeneratedDataset):
    """``strokes``: class ``k`` is glyph ``k``; image ``i`` has label ``i % num_classes``."""

    defaults = DEFAULTS
    version = 2  # 1 drew a random glyph per image (its labels were noise)

    def class_keys(self, name, num_classes):
        return list(range(num_classes * self.class_set, num_classes * (self.class_set + 1)))

    def class_id(self, key):
        return "glyph-%03d" % key

    def render_image(self, key, i):
        stream = [_SALT, 2, self.seed, _SPLIT_ID[self.split], int(i)]
        rng = np.random.default_rng(stream + [self.class_set] if self.class_set else stream)
        return render(glyph(key), rng, self.native_size)
