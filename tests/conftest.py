"""Shared fixtures: small fake on-disk layouts of every dataset format, with generated JPEGs."""

import os

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* and the docs' golden blocks from this run (tests/golden_files.py)")


@pytest.fixture
def golden(request):
    from golden_files import Golden

    return Golden(request.config.getoption("--update-golden"))


def write_image(path, seed=0, size=(40, 56), fmt=None, mode="RGB"):
    """A small image whose colour depends on ``seed`` (so classes differ), written with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 256, size=3)
    img = np.clip(base + rng.integers(-30, 31, size=(h, w, 3)), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    im = Image.fromarray(img, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(str(path), format=fmt)
    return path


def write_corrupt(path):
    """A file with an image extension that is not an image at all."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "wb") as f:
        f.write(b"this is not a jpeg" * 20)
    return path


def write_truncated(path, seed=0):
    """A valid JPEG header and the first part of its data: what an interrupted download leaves."""
    write_image(path, seed=seed, size=(64, 64))
    with open(str(path), "rb") as f:
        data = f.read()
    with open(str(path), "wb") as f:
        f.write(data[: len(data) // 2])
    return path


@pytest.fixture
def image_tools():
    class Tools:
        write_image = staticmethod(write_image)
        write_corrupt = staticmethod(write_corrupt)
        write_truncated = staticmethod(write_truncated)

    return Tools


@pytest.fixture
def fake_imagenet(tmp_path):
    """ILSVRC2012 layout: 3 classes, 3 train and 2 val images each, plus the synset mapping."""
    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537", "n02102040"]
    for k, wnid in enumerate(wnids):
        for j in range(3):
            write_image(root / "train" / wnid / ("%s_%d.JPEG" % (wnid, j)), seed=k)
        for j in range(2):
            write_image(root / "val" / wnid / ("ILSVRC2012_val_%d%d.JPEG" % (k, j)), seed=k)
    (root / "train" / wnids[0] / ".DS_Store").write_bytes(b"junk")
    (root / "train" / wnids[0] / "notes.txt").write_text("not an image")
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn02102040 English springer\n"
    )
    return root, wnids


@pytest.fixture
def fake_flowers(tmp_path):
    """Flowers102 scaled down: 18 images of 3 classes; trnid 3, valid 3, tstid 12 (1 : 1 : 4 as the real one ~)."""
    scipy_io = pytest.importorskip("scipy.io", reason="the Flowers102 reader reads .mat files with scipy")

    root = tmp_path / "flowers"
    n = 18
    labels = np.array([1 + (i % 3) for i in range(n)], dtype=np.uint8)  # 1-based, as in imagelabels.mat
    for i in range(1, n + 1):
        write_image(root / "jpg" / ("image_%05d.jpg" % i), seed=int(labels[i - 1]))
    ids = np.arange(1, n + 1)
    trnid, valid, tstid = ids[:3], ids[3:6], ids[6:]
    scipy_io.savemat(str(root / "imagelabels.mat"), {"labels": labels[None, :]})
    scipy_io.savemat(str(root / "setid.mat"), {"trnid": trnid[None, :], "valid": valid[None, :],
                                              "tstid": tstid[None, :]})
    return root, {"labels": labels, "trnid": trnid, "valid": valid, "tstid": tstid}


@pytest.fixture
def fake_cub(tmp_path):
    """CUB-200-2011 layout: 3 classes x 4 images, the first two of each class for training."""
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    i = 0
    for k, c in enumerate(classes):
        for j in range(4):
            i += 1
            rel = "%s/%s_%04d.jpg" % (c, c.split(".")[1], j)
            write_image(root / "images" / rel, seed=k)
            images.append("%d %s" % (i, rel))
            labels.append("%d %d" % (i, k + 1))
            split.append("%d %d" % (i, 1 if j < 2 else 0))
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join("%d %s\n" % (k + 1, c) for k, c in enumerate(classes)))
    return root, classes


@pytest.fixture
def fake_indoor(tmp_path):
    """MIT Indoor 67 layout: 3 classes x 5 images, 4 train / 1 test each, CRLF list files."""
    root = tmp_path / "indoor"
    classes = ["airport_inside", "bakery", "kitchen"]
    train, test = [], []
    for k, c in enumerate(classes):
        for j in range(5):
            rel = "%s/%s_%04d.jpg" % (c, c, j)
            write_image(root / "Images" / c / ("%s_%04d.jpg" % (c, j)), seed=k)
            (train if j < 4 else test).append(rel)
    (root / "TrainImages.txt").write_text("\r\n".join(train) + "\r\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")
    return root, classes


@pytest.fixture
def fake_folder_flat(tmp_path):
    """DIR/<class>/* with 10, 5 and 3 images (PNG and JPEG mixed)."""
    root = tmp_path / "flat"
    counts = {"cat": 10, "dog": 5, "emu": 3}
    for k, (c, n) in enumerate(counts.items()):
        for j in range(n):
            ext = "png" if j % 2 else "jpg"
            write_image(root / c / ("%s_%02d.%s" % (c, j, ext)), seed=k)
    return root, counts


@pytest.fixture
def fake_folder_split(tmp_path):
    """DIR/train/<class>/* and DIR/test/<class>/*; class 'c' only exists in train."""
    root = tmp_path / "split"
    for k, c in enumerate(["a", "b", "c"]):
        for j in range(4):
            write_image(root / "train" / c / ("%d.jpg" % j), seed=k)
        if c != "c":
            for j in range(2):
                write_image(root / "test" / c / ("%d.JPG" % j), seed=k)
    return root
