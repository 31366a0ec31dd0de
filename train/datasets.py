"""The datasets training reads: host/'s readers, plus those only pretraining needs.

ImageNet and the generated ``strokes`` live here and not in host/ because a board never pretrains:
it fine-tunes a head on its own images (host/'s readers) with a backbone pretrained elsewhere.
Pretraining may also read a union, ``a+b`` (e.g. ``synthetic+strokes``): the classes of ``a``, then
those of ``b``; an option ``a.key=value`` is for part ``a`` only, a plain one for every part.
"""

import bisect
import os
from collections import ChainMap
from typing import Dict, Mapping

import numpy as np

from bnn_transfer.host.datasets import DATASETS as HOST_DATASETS
from bnn_transfer.host.datasets import (
    DatasetSpec,
    from_class_dirs,
    in_folder,
    list_subdirs,
    need_dir,
    read_lines,
    register_dataset,
)
from bnn_transfer.host.datasets import open_dataset as open_from_table
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.imagedataset import ImageDataset
from bnn_transfer.host.synthetic import OPTION_NAMES

from .strokes import StrokesDataset

# Pretraining-only datasets (how to add one: host/datasets.py), over host's table: a dataset registered
# there is one here too
PRETRAINING_ONLY: Dict[str, DatasetSpec] = {}
DATASETS: Mapping[str, DatasetSpec] = ChainMap(PRETRAINING_ONLY, HOST_DATASETS)


def dataset_name(name):
    """``name`` if it is a dataset or a ``+`` union of distinct ones; BnnError otherwise (the CLI's check)."""
    parts = name.split("+")
    for part in parts:
        if part not in DATASETS:
            raise BnnError("dataset %r: unknown, choose one of %s, or a union such as synthetic+strokes"
                           % (part, ", ".join(DATASETS)))
    if len(set(parts)) != len(parts):
        raise BnnError("dataset %r: a union names each dataset once" % name)
    return name


def open_dataset(name, split, data_dir=None, **options):
    """``host.datasets.open_dataset``, ``imagenet`` (ILSVRC2012: DIR/train/<wnid>/, DIR/val/<wnid>/),
    ``strokes``, and unions ``a+b``: every part is given ``data_dir`` and the options, except that
    ``a.key=value`` goes to part ``a`` only."""
    dataset_name(name)
    if "+" in name:
        parts = name.split("+")
        return UnionDataset([open_dataset(part, split, data_dir, **opts)
                             for part, opts in zip(parts, _part_options(name, parts, options))])
    return open_from_table(name, split, data_dir, table=DATASETS, **options)


def _part_options(name, parts, options):
    """The options of each part of a union: the plain ones, and those named ``part.key``."""
    out = [{k: v for k, v in options.items() if "." not in k} for _ in parts]
    for key, value in options.items():
        if "." in key:
            part, _, option = key.partition(".")
            if part not in parts:
                raise BnnError("dataset %s: option %s names no part of it" % (name, key))
            out[parts.index(part)][option] = value
    return out


class UnionDataset(ImageDataset):
    """Several datasets of one split as one: their images one after the other, labels offset to match."""

    def __init__(self, parts):
        classes = [c for p in parts for c in p.classes]
        if len(set(classes)) != len(classes):
            raise BnnError("dataset %s: its parts share class names" % "+".join(p.name for p in parts))
        offsets = np.cumsum([0] + [len(p.classes) for p in parts])
        labels = np.concatenate([p.labels + o for p, o in zip(parts, offsets)])
        super().__init__("+".join(p.name for p in parts), parts[0].split, next((p.root for p in parts if p.root), None),
                         classes, None, labels, [n for p in parts for n in p.class_names],
                         {p.name: p.options for p in parts})
        self.parts = parts
        self._starts = list(np.cumsum([0] + [len(p) for p in parts[:-1]]))
        sizes = {p.native_size for p in parts}
        self.native_size = sizes.pop() if len(sizes) == 1 else None

    def _locate(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._starts, i) - 1
        return self.parts[k], i - int(self._starts[k])

    def source(self, i):
        part, j = self._locate(i)
        return part.source(j)

    def load(self, i):
        part, j = self._locate(i)
        return part.load(j)


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


register_dataset(DatasetSpec("imagenet", in_folder("imagenet", _imagenet)), PRETRAINING_ONLY)
register_dataset(DatasetSpec("strokes", lambda split, data_dir, **options: StrokesDataset("strokes", split, **options),
                             OPTION_NAMES, on_disk=False), PRETRAINING_ONLY)
