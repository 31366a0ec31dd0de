"""The datasets training reads: host/'s readers, plus ImageNet, which only pretraining needs.

The ImageNet reader lives here and not in host/ because a board never pretrains: it fine-tunes a
head on its own images (host/'s readers) with the backbone pretrained on ImageNet elsewhere.
"""

import os

from host.datasets import DATASETS as HOST_DATASETS
from host.datasets import from_class_dirs, list_subdirs, need_dir, read_layout, read_lines
from host.datasets import open_dataset as open_host_dataset
from host.errors import BnnError

DATASETS = ("imagenet",) + HOST_DATASETS


def open_dataset(name, split, data_dir=None, **options):
    """``host.datasets.open_dataset``, and ``imagenet`` (ILSVRC2012: DIR/train/<wnid>/, DIR/val/<wnid>/)."""
    if name == "imagenet":
        return read_layout(name, _imagenet, (), split, data_dir, options)
    if name not in DATASETS:
        raise BnnError("dataset %r: unknown, choose one of %s" % (name, ", ".join(DATASETS)))
    return open_host_dataset(name, split, data_dir, **options)


def _imagenet(root, split):
    layout = "ILSVRC2012 layout: DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG"
    split_dir = need_dir(os.path.join(root, "train" if split == "train" else "val"), layout)
    if not list_subdirs(split_dir):
        raise BnnError("%s: expected one folder per class (val/<wnid>/*.JPEG); move the flat validation images "
                       "into class folders using LOC_val_solution.csv" % split_dir)
    # Labels must agree between the splits, so the class list is the union of both folders.
    classes = set()
    for d in ("train", "val"):
        if os.path.isdir(os.path.join(root, d)):
            classes.update(list_subdirs(os.path.join(root, d)))
    classes = sorted(classes)
    names = None
    mapping = os.path.join(root, "LOC_synset_mapping.txt")
    if os.path.exists(mapping):
        human = {}
        for _, line in read_lines(mapping, "wnid to name mapping"):
            wnid, _, desc = line.partition(" ")
            human[wnid] = desc.strip() or wnid
        names = [human.get(c, c) for c in classes]
    return from_class_dirs("imagenet", split, root, split_dir, classes, {}, names)
