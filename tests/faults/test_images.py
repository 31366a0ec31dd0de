"""Images and image folders a user may have: huge headers, 16-bit depth, link loops, odd class folders."""

import os
import struct
import zlib

import numpy as np
import pytest

from bnn_transfer.host.cli import run_cli
from bnn_transfer.host.datasets import check_training_classes, list_images, open_dataset
from bnn_transfer.host.errors import BnnError, ImageError
from bnn_transfer.host.preprocess import MAX_PIXELS, decode_image
from tests.conftest import write_image
from tests.host.fake_pynq import make_bundle


def write_png(path, width, height, color_type, bitdepth, rows=None):
    """A PNG written by hand: PIL cannot write 16-bit colour or a header that lies about its size."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\0" + r.astype(">u2").tobytes() for r in rows) if rows is not None else b"\0" * 64
    header = struct.pack(">IIBBBBB", width, height, bitdepth, color_type, 0, 0, 0)
    with open(str(path), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))
    return str(path)


def test_huge_image_is_refused_from_its_header(tmp_path):
    path = write_png(tmp_path / "bomb.png", 13000, 13000, 0, 8)
    assert os.path.getsize(path) < 1000
    with pytest.raises(ImageError, match=r"bomb\.png: image of 13000 x 13000 pixels is over the limit of 40 mega"):
        decode_image(path)
    assert MAX_PIXELS * 3 < 512 << 20  # decoded RGB at the limit fits a Pynq-Z2's memory


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    g = (np.arange(256).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    grey = decode_image(write_png(tmp_path / "g16.png", 16, 16, 0, 16, rows=g))
    assert np.array_equal(grey[..., 0], (g >> 8).astype(np.uint8)) and np.array_equal(grey[..., 0], grey[..., 2])
    rgb = np.stack([g, 65535 - g, np.full_like(g, 0x8000)], -1)
    col = decode_image(write_png(tmp_path / "rgb48.png", 16, 16, 2, 16, rows=rgb.reshape(16, -1)))
    assert np.array_equal(col, (rgb >> 8).astype(np.uint8))


def test_symlink_loop_lists_each_image_once(tmp_path):
    cls = tmp_path / "data" / "cat"
    for j in range(3):
        write_image(cls / ("%d.png" % j), seed=j, size=(8, 8))
    os.symlink(str(cls), str(cls / "loop"))
    os.symlink(str(cls), str(cls / "again"))
    assert [os.path.basename(p) for p in list_images(str(cls))] == ["0.png", "1.png", "2.png"]


def test_fewer_than_two_trained_classes_is_an_error_and_test_only_classes_a_warning(tmp_path, capsys):
    root = tmp_path / "one"
    for j in range(4):
        write_image(root / "cat" / ("%d.png" % j), size=(8, 8))
    with pytest.raises(BnnError, match=r"one: 1 class\(es\) with training images \(cat\); a classifier needs at least"):
        check_training_classes(open_dataset("folder", "train", str(root)))
    split = tmp_path / "split"
    for c in ("a", "b"):
        for j in range(2):
            write_image(split / "train" / c / ("%d.png" % j), size=(8, 8))
    for c in ("a", "b", "only_test"):
        write_image(split / "test" / c / "0.png", size=(8, 8))
    ds = open_dataset("folder", "train", str(split))
    check_training_classes(ds)
    assert len(ds.classes) == 3
    assert "no training images for 1 class(es), which a head can never predict: only_test" in capsys.readouterr().err


def test_class_folder_with_a_non_utf8_name_through_host_fit_and_eval(tmp_path, capsys):
    root = str(tmp_path / "data").encode()
    for k, name in enumerate([b"caf\xe9", b"dog"]):  # latin-1 bytes: not valid UTF-8
        for j in range(3):
            d = os.path.join(root, name)
            os.makedirs(d, exist_ok=True)
            write_image(os.fsdecode(os.path.join(d, b"%d.png" % j)), seed=k, size=(8, 8))
    bundle = make_bundle(tmp_path / "bundle")
    head = str(tmp_path / "head.npz")
    common = ["--dataset", "folder", "--data-dir", os.fsdecode(root), "--option", "test_fraction=0.34",
              "--backend", "emulator", "--quiet", "--no-cache"]
    assert run_cli(_host_main, ["fit", "--bundle", bundle, "--out", head, *common]) == 0
    assert run_cli(_host_main, ["eval", "--bundle", bundle, "--head", head, *common]) == 0, capsys.readouterr().err
    assert os.path.getsize(str(tmp_path / "head.confusion.png")) > 0


def _host_main(argv):
    from bnn_transfer.host.__main__ import main

    return main(argv)


def test_fifos_and_devices_among_the_images_are_skipped_not_waited_for(tmp_path, capsys):
    """A FIFO named like an image would block the decoder for good (no writer ever comes)."""
    root = tmp_path / "data"
    for k, name in enumerate(["cat", "dog"]):
        for j in range(3):
            write_image(root / name / ("%d.png" % j), seed=k, size=(8, 8))
    os.mkfifo(str(root / "cat" / "zz.png"))
    os.symlink("/dev/zero", str(root / "dog" / "zero.png"))
    with pytest.raises(ImageError, match=r"zz\.png: cannot decode image \(OSError: is a FIFO, not a regular file\)"):
        decode_image(str(root / "cat" / "zz.png"))
    bundle = make_bundle(tmp_path / "bundle")
    head = str(tmp_path / "head.npz")
    common = ["--dataset", "folder", "--data-dir", str(root), "--option", "test_fraction=0.34",
              "--backend", "emulator", "--quiet", "--no-cache"]
    assert run_cli(_host_main, ["fit", "--bundle", bundle, "--out", head, *common]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    # predict's exit code 1: some images could not be read (the others are still predicted)
    assert run_cli(_host_main, ["predict", "--bundle", bundle, "--head", head, str(root / "cat" / "zz.png")]) == 1
    assert "zz.png: cannot decode image (OSError: is a FIFO, not a regular file)" in capsys.readouterr().err


def test_images_relabelled_in_place_are_extracted_again(tmp_path, capsys):
    """Swapping two class folders' files (same names) keeps the list of paths; the cache must still miss."""
    import json
    import shutil

    root = tmp_path / "data"
    for k, name in enumerate(["cat", "dog"]):
        for j in range(3):
            write_image(root / name / ("%d.png" % j), seed=10 * k + j, size=(8, 8))
    bundle = make_bundle(tmp_path / "bundle")
    common = ["--dataset", "folder", "--data-dir", str(root), "--option", "test_fraction=0.34",
              "--backend", "emulator", "--quiet", "--feature-cache", str(tmp_path / "cache")]
    fit = ["fit", "--bundle", bundle, "--out", str(tmp_path / "head.npz"), *common]
    assert run_cli(_host_main, fit) == 0 and not json.loads(capsys.readouterr().out)["cached"]
    assert run_cli(_host_main, fit) == 0 and json.loads(capsys.readouterr().out)["cached"]
    shutil.move(str(root / "cat"), str(tmp_path / "tmp"))
    shutil.move(str(root / "dog"), str(root / "cat"))
    shutil.move(str(tmp_path / "tmp"), str(root / "dog"))
    assert run_cli(_host_main, fit) == 0 and not json.loads(capsys.readouterr().out)["cached"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(tmp_path, orientation):
    """Phones store portrait photos as landscape pixels plus an orientation tag."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / "photo.jpg")
    im.save(path, exif=exif, quality=95)
    with Image.open(path) as saved:
        want = np.asarray(ImageOps.exif_transpose(saved).convert("RGB"))
    got = decode_image(path)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert got.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))


def test_hidden_class_folders_are_named_in_a_warning(tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("cat", "dog", ".x", "..."):
        write_image(root / name / "0.png", size=(8, 8))
    ds = open_dataset("folder", "train", data_dir=str(root))
    assert ds.classes == ["cat", "dog"]
    assert "warning: %s: hidden folders are not classes, skipped: ..., .x" % root in capsys.readouterr().err
