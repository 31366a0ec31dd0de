import os

import numpy as np
import pytest

from bnn_transfer.host.datasets import DATASETS, ImageDataset, open_dataset
from bnn_transfer.host.errors import BnnError


def test_dataset_names():
    assert tuple(DATASETS) == ("flowers102", "cub200", "indoor67", "folder", "synthetic", "synthetic-transfer",
                               "digits")


def check_common(ds, name, split, n, num_classes):
    assert isinstance(ds, ImageDataset)
    assert (ds.name, ds.split, len(ds), len(ds.classes)) == (name, split, n, num_classes)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
    assert ds.native_size is None
    img = ds.load(0)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert all(os.path.isfile(ds.source(i)) for i in range(n))
    d = ds.describe()
    assert d["count"] == n and d["num_classes"] == num_classes and d["name"] == name and d["split"] == split
    assert d["fingerprint"] == ds.fingerprint() and len(ds.fingerprint()) == 64


def test_flowers_paper_and_official_splits(fake_flowers):
    root, meta = fake_flowers
    paper_tr = open_dataset("flowers102", "train", str(root))
    paper_te = open_dataset("flowers102", "test", str(root))
    # The paper trains on tstid and tests on trnid (6,149 / 1,020 on the real data).
    check_common(paper_tr, "flowers102", "train", len(meta["tstid"]), 3)
    check_common(paper_te, "flowers102", "test", len(meta["trnid"]), 3)
    off_tr = open_dataset("flowers102", "train", str(root), flowers_split="official")
    off_te = open_dataset("flowers102", "test", str(root), flowers_split="official")
    assert len(off_tr) == len(meta["trnid"]) + len(meta["valid"]) and len(off_te) == len(meta["tstid"])
    assert paper_tr.classes == ["class_001", "class_002", "class_003"]
    assert paper_tr.describe()["options"] == {"flowers_split": "paper"}
    assert paper_tr.fingerprint() != off_te.fingerprint()  # same images, other split name
    for ds in (paper_tr, paper_te, off_tr, off_te):
        for i in range(len(ds)):
            image_id = int(os.path.basename(ds.source(i))[6:11])
            assert ds.labels[i] == meta["labels"][image_id - 1] - 1
    ids = sorted(int(os.path.basename(off_tr.source(i))[6:11]) for i in range(len(off_tr)))
    assert ids == sorted(np.concatenate([meta["trnid"], meta["valid"]]).tolist())


def test_flowers_names_file_and_errors(fake_flowers):
    root, _ = fake_flowers
    (root / "names.txt").write_text("pink primrose\nhard-leaved pocket orchid\ncanterbury bells\n")
    ds = open_dataset("flowers102", "train", str(root), names_file="names.txt")
    assert ds.class_names == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    with pytest.raises(BnnError, match="flowers_split='bogus'"):
        open_dataset("flowers102", "train", str(root), flowers_split="bogus")
    os.unlink(root / "setid.mat")
    with pytest.raises(BnnError) as e:
        open_dataset("flowers102", "train", str(root))
    assert str(e.value).startswith(str(root / "setid.mat") + ": not found")


def test_cub200(fake_cub):
    root, classes = fake_cub
    tr = open_dataset("cub200", "train", str(root))
    te = open_dataset("cub200", "test", str(root))
    check_common(tr, "cub200", "train", 6, 3)
    check_common(te, "cub200", "test", 6, 3)
    assert tr.classes == classes
    np.testing.assert_array_equal(tr.labels, [0, 0, 1, 1, 2, 2])
    assert tr.source(0).endswith("0000.jpg") and te.source(0).endswith("0002.jpg")
    # Without classes.txt the names come from the image folders.
    os.unlink(root / "classes.txt")
    assert open_dataset("cub200", "test", str(root)).classes == classes


def test_cub200_errors(fake_cub):
    root, _ = fake_cub
    with open(root / "images.txt", "a") as f:
        f.write("13 003.Sooty_Albatross/extra.jpg\n")
    with pytest.raises(BnnError, match="image_class_labels.txt: no entry for image id 13"):
        open_dataset("cub200", "train", str(root))
    os.unlink(root / "train_test_split.txt")
    with pytest.raises(BnnError) as e:
        open_dataset("cub200", "train", str(root))
    assert str(e.value).startswith(str(root / "train_test_split.txt") + ": not found")
    (root / "images.txt").write_text("1\n")
    with pytest.raises(BnnError, match="images.txt:1: expected 2 columns"):
        open_dataset("cub200", "train", str(root))


def test_indoor67(fake_indoor):
    root, classes = fake_indoor
    tr = open_dataset("indoor67", "train", str(root))
    te = open_dataset("indoor67", "test", str(root))
    check_common(tr, "indoor67", "train", 12, 3)
    check_common(te, "indoor67", "test", 3, 3)
    assert tr.classes == te.classes == classes
    np.testing.assert_array_equal(te.labels, [0, 1, 2])
    assert np.bincount(tr.labels).tolist() == [4, 4, 4]
    os.unlink(root / "TestImages.txt")
    with pytest.raises(BnnError, match="TestImages.txt: not found"):
        open_dataset("indoor67", "train", str(root))


def test_folder_split_layout(fake_folder_split):
    root = fake_folder_split
    tr = open_dataset("folder", "train", str(root))
    te = open_dataset("folder", "test", str(root))
    check_common(tr, "folder", "train", 12, 3)
    check_common(te, "folder", "test", 4, 3)  # .JPG counts: extensions are case-insensitive
    assert tr.classes == te.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(te.labels, [0, 0, 1, 1])
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(BnnError) as e:
        open_dataset("folder", "train", str(root))
    assert str(e.value).startswith(str(root / "test") + ": not found")


def test_folder_flat_layout_is_a_seeded_stratified_split(fake_folder_flat):
    root, counts = fake_folder_flat
    tr = open_dataset("folder", "train", str(root))
    te = open_dataset("folder", "test", str(root))
    assert tr.classes == ["cat", "dog", "emu"]
    # round(0.2 * n), at least one per class in each split.
    assert np.bincount(te.labels).tolist() == [2, 1, 1]
    assert np.bincount(tr.labels).tolist() == [8, 4, 2]
    all_files = {tr.source(i) for i in range(len(tr))} | {te.source(i) for i in range(len(te))}
    assert len(all_files) == sum(counts.values()) == len(tr) + len(te)
    again = open_dataset("folder", "test", str(root))
    assert [again.source(i) for i in range(len(again))] == [te.source(i) for i in range(len(te))]
    assert again.fingerprint() == te.fingerprint()
    other = [open_dataset("folder", "test", str(root), seed=s) for s in range(1, 6)]
    assert any(o.fingerprint() != te.fingerprint() for o in other)
    half = open_dataset("folder", "test", str(root), test_fraction=0.5, seed=3)
    assert np.bincount(half.labels).tolist() == [5, 2, 2]  # round half to even: 2.5 -> 2, 1.5 -> 2
    with pytest.raises(BnnError, match="test_fraction"):
        open_dataset("folder", "test", str(root), test_fraction=1.0)
    (root / "empty").mkdir()
    with pytest.raises(BnnError, match="empty: class folder has no images"):
        open_dataset("folder", "train", str(root))


def test_fingerprint_follows_the_file_list(fake_folder_split, image_tools):
    root = fake_folder_split
    fp = open_dataset("folder", "train", str(root)).fingerprint()
    assert fp == open_dataset("folder", "train", str(root)).fingerprint()
    image_tools.write_image(root / "train" / "a" / "new.png")
    assert open_dataset("folder", "train", str(root)).fingerprint() != fp


def test_bad_arguments(tmp_path, fake_folder_split):
    with pytest.raises(BnnError, match="dataset 'mnist': unknown"):
        open_dataset("mnist", "train", str(tmp_path))
    with pytest.raises(BnnError, match="split 'val'"):
        open_dataset("folder", "val", str(fake_folder_split))
    with pytest.raises(BnnError, match="needs --data-dir"):
        open_dataset("cub200", "train")
    with pytest.raises(BnnError, match="unknown option\\(s\\) flowers_split"):
        open_dataset("folder", "train", str(fake_folder_split), flowers_split="paper")
    missing = tmp_path / "nowhere"
    with pytest.raises(BnnError) as e:
        open_dataset("indoor67", "train", str(missing))
    assert str(e.value).startswith(str(missing) + ": not found")


def test_missing_image_is_an_image_error_not_a_crash(fake_indoor):
    from bnn_transfer.host.errors import ImageError

    root, _ = fake_indoor
    ds = open_dataset("indoor67", "test", str(root))
    os.unlink(ds.source(1))
    with pytest.raises(ImageError, match="cannot decode image"):
        ds.load(1)
    ds.load(0)
