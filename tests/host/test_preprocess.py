import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError, ImageError
from bnn_transfer.host.preprocess import (
    Preprocess,
    center_crop,
    check_batch,
    decode_image,
    eval_transform,
    eval_transform_resized,
    pad_to_min,
    prepare_batch,
    random_crop_flip,
    resize_longest_side,
    resized_shape,
    train_transform,
    train_transform_resized,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MY_HOST_MODULES = ("preprocess", "datasets", "synthetic")


def ramp(h, w):
    """An image where every pixel is distinct enough to locate crops and flips."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + 2 * y) % 256], -1).astype(np.uint8)


def test_preprocess_config():
    assert Preprocess.for_input_size(224) == Preprocess(224, 256)
    assert Preprocess.for_input_size(32) == Preprocess(32, 37)
    pp = Preprocess.for_input_size(112)
    assert Preprocess.from_dict(pp.to_dict()) == pp
    assert pp.to_dict() == {"input_size": 112, "resize_longest": 128}
    with pytest.raises(BnnError, match="run.json: .*missing \\['resize_longest'\\]"):
        Preprocess.from_dict({"input_size": 32}, where="run.json")
    with pytest.raises(BnnError, match="unexpected \\['mean'\\]"):
        Preprocess.from_dict({"input_size": 32, "resize_longest": 37, "mean": 0})
    with pytest.raises(BnnError, match="input_size"):
        Preprocess(0, 37)
    with pytest.raises(BnnError, match="resize_longest"):
        Preprocess(32, 37.5)


def test_decode_image_formats(tmp_path, image_tools):
    p = image_tools.write_image(tmp_path / "a.jpg", size=(20, 30))
    img = decode_image(str(p))
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    for mode, fmt in (("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG")):
        q = image_tools.write_image(tmp_path / ("b_%s.img" % mode), size=(9, 7), fmt=fmt, mode=mode)
        out = decode_image(str(q))
        assert out.shape == (9, 7, 3) and out.dtype == np.uint8, mode


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "missing", "empty"])
def test_decode_image_errors_name_the_file(tmp_path, image_tools, kind):
    p = tmp_path / ("bad_%s.jpg" % kind)
    if kind == "corrupt":
        image_tools.write_corrupt(p)
    elif kind == "truncated":
        image_tools.write_truncated(p)
    elif kind == "empty":
        p.write_bytes(b"")
    with pytest.raises(ImageError) as e:
        decode_image(str(p))
    msg = str(e.value)
    assert msg.startswith(str(p) + ": cannot decode image (")
    assert "\n" not in msg
    if kind == "truncated":
        assert "truncated" in msg


def test_resize_longest_side():
    img = ramp(60, 90)
    out = resize_longest_side(img, 37)
    assert out.shape == (25, 37, 3) and out.dtype == np.uint8
    assert resize_longest_side(ramp(90, 60), 37).shape == (37, 25, 3)
    assert resize_longest_side(ramp(5, 3), 37).shape == (37, 22, 3)  # small images are scaled up
    assert resize_longest_side(ramp(1, 500), 37).shape == (1, 37, 3)  # never a zero side
    same = ramp(37, 20)
    assert resize_longest_side(same, 37) is same  # already resized: untouched
    np.testing.assert_array_equal(resize_longest_side(img, 37), out)  # deterministic
    assert resized_shape(480, 640, 256) == (192, 256)
    with pytest.raises(ValueError):
        resize_longest_side(img.astype(np.float32), 37)


def test_pad_to_min_is_symmetric_zero_padding():
    img = np.full((10, 40, 3), 200, np.uint8)
    out = pad_to_min(img, 33)
    assert out.shape == (33, 40, 3)
    # 23 rows of padding: 11 above, 12 below.
    assert (out[:11] == 0).all() and (out[21:] == 0).all() and (out[11:21] == 200).all()
    big = ramp(40, 40)
    assert pad_to_min(big, 32) is big
    assert pad_to_min(ramp(3, 5), 8).shape == (8, 8, 3)


def test_center_crop():
    img = ramp(40, 50)
    out = center_crop(img, 32)
    np.testing.assert_array_equal(out, img[4:36, 9:41])
    with pytest.raises(ValueError, match="pad it first"):
        center_crop(ramp(20, 50), 32)


def test_random_crop_flip_is_seeded_and_flips():
    img = ramp(50, 60)
    a = random_crop_flip(img, 32, np.random.default_rng(7))
    b = random_crop_flip(img, 32, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    flips, positions = 0, set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = random_crop_flip(img, 32, rng)
        assert out.shape == (32, 32, 3)
        # The ramp encodes coordinates: red = x, green = y.
        flipped = out[0, 0, 0] > out[0, -1, 0]
        flips += flipped
        left = int(out[0, -1, 0]) if flipped else int(out[0, 0, 0])
        top = int(out[0, 0, 1])
        positions.add((top, left))
        window = img[top:top + 32, left:left + 32]
        np.testing.assert_array_equal(out, window[:, ::-1] if flipped else window)
    assert 70 < flips < 130
    assert len(positions) > 50  # crops really move


def test_transforms_shapes_and_composition():
    pp = Preprocess.for_input_size(32)
    rng = np.random.default_rng(0)
    for shape in ((48, 48), (30, 200), (200, 30), (5, 3), (1, 1), (480, 640)):
        img = ramp(*shape)
        for out in (eval_transform(img, pp), train_transform(img, pp, rng)):
            assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
        resized = resize_longest_side(img, pp.resize_longest)
        np.testing.assert_array_equal(eval_transform(img, pp), eval_transform_resized(resized, pp))
        np.testing.assert_array_equal(train_transform(img, pp, np.random.default_rng(3)),
                                      train_transform_resized(resized, pp, np.random.default_rng(3)))
    # A wide image is padded above and below: the center crop shows black bands.
    out = eval_transform(np.full((30, 200, 3), 255, np.uint8), pp)
    assert (out[0] == 0).all() and (out[-1] == 0).all() and (out[16] == 255).all()


def test_prepare_batch_and_check_batch():
    pp = Preprocess.for_input_size(32)
    batch = prepare_batch([ramp(40, 60), ramp(100, 20)], pp)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], eval_transform(ramp(100, 20), pp))
    assert check_batch(batch, pp) is batch
    assert prepare_batch([], pp).shape == (0, 32, 32, 3)
    cases = [
        (batch.astype(np.float32), "dtype uint8"),
        (batch[0], "rank 3"),
        (np.zeros((2, 32, 32, 4), np.uint8), "3 channels"),
        (np.zeros((2, 3, 32, 32), np.uint8), "3 channels"),
        (np.zeros((2, 28, 28, 3), np.uint8), "32x32 images, got 28x28"),
        ([[1, 2]], "numpy"),
    ]
    for x, what in cases:
        with pytest.raises(BnnError, match=what) as e:
            check_batch(x, pp, name="camera.png")
        assert str(e.value).startswith("camera.png: ")


def test_my_host_modules_parse_as_python38():
    for m in MY_HOST_MODULES:
        with open(os.path.join(REPO, "host", m + ".py"), encoding="utf-8") as f:
            ast.parse(f.read(), feature_version=(3, 8))


def test_my_host_modules_import_without_heavy_dependencies():
    blocked = ["torch", "brevitas", "qonnx", "finn", "scipy", "sklearn", "PIL", "tqdm"]
    code = (
        "import sys\n"
        "for m in %r: sys.modules[m] = None\n"
        "import host.preprocess, host.datasets, host.synthetic\n"
        "ds = host.datasets.open_dataset('synthetic-transfer', 'test', n_test_per_class=1)\n"
        "assert ds.load(0).shape == (48, 48, 3)\n"
    ) % blocked
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
