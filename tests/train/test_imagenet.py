"""ImageNet, the dataset only pretraining reads (train/datasets.py), and train's view of host's readers."""

import os

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.train.datasets import DATASETS, open_dataset


def test_train_reads_imagenet_strokes_and_every_host_dataset():
    from bnn_transfer.host.datasets import DATASETS as HOST

    assert list(DATASETS) == list(HOST) + ["imagenet", "strokes"] and not {"imagenet", "strokes"} & set(HOST)
    assert len(open_dataset("synthetic", "test", n_test_per_class=1)) == 24
    with pytest.raises(BnnError, match="dataset 'nope': unknown, choose one of flowers102, .*, imagenet, strokes"):
        open_dataset("nope", "train")
    with pytest.raises(BnnError, match="dataset imagenet: needs --data-dir"):
        open_dataset("imagenet", "train")
    with pytest.raises(BnnError, match=r"dataset imagenet: unknown option\(s\) seed \(valid: none\)"):
        open_dataset("imagenet", "train", "/nonexistent", seed=1)


def test_imagenet(fake_imagenet):
    root, wnids = fake_imagenet
    tr = open_dataset("imagenet", "train", str(root))
    te = open_dataset("imagenet", "test", str(root))
    assert (len(tr), len(te)) == (9, 6)  # .DS_Store and notes.txt are not images
    assert tr.load(0).shape[2] == 3 and tr.describe()["name"] == "imagenet" and te.split == "test"
    assert tr.classes == te.classes == wnids
    assert tr.class_names[0] == "tench, Tinca tinca"
    np.testing.assert_array_equal(tr.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(te.labels, [0, 0, 1, 1, 2, 2])
    for i in range(len(te)):
        assert os.path.basename(os.path.dirname(te.source(i))) == wnids[te.labels[i]]
        assert "/val/" in te.source(i).replace(os.sep, "/")


def test_imagenet_errors(fake_imagenet):
    root, wnids = fake_imagenet
    import shutil

    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    with pytest.raises(BnnError, match="expected one folder per class"):
        open_dataset("imagenet", "test", str(root))
    shutil.rmtree(root / "val")
    with pytest.raises(BnnError) as e:
        open_dataset("imagenet", "test", str(root))
    assert str(e.value).startswith(str(root / "val") + ": not found")
    assert len(open_dataset("imagenet", "train", str(root))) == 9  # the train split needs no val/
