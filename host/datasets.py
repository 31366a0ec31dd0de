"""Dataset readers: file lists, labels and splits from each dataset's official on-disk layout.

Nothing is downloaded. ``open_dataset(name, split, data_dir, **options)`` returns an
``ImageDataset`` for every name in ``DATASETS``; a missing index file or folder raises BnnError
naming the path. Images are decoded lazily by ``ImageDataset.load`` (an unreadable one raises
ImageError so that callers can skip and count it).

Flowers102 splits: the official split trains on 2,040 images (``trnid`` + ``valid``) and tests on
6,149 (``tstid``). The paper reports 6,149 training / 1,020 test images, i.e. the official sets with
their roles swapped: train = ``tstid``, test = ``trnid``. That is the default (``flowers_split="paper"``)
so that the Table 2 numbers are comparable; ``flowers_split="official"`` gives the standard split.
"""

import os
import sys
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

from .errors import BnnError
from .imagedataset import ImageDataset, printable
from .inputs import regular_file
from .synthetic import OPTION_NAMES, open_synthetic

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EXT_LIST = "/".join(e[1:] for e in IMAGE_EXTENSIONS)


# --- helpers ---------------------------------------------------------------------------------------

def _need(path, what):
    if not os.path.exists(path):
        raise BnnError("%s: not found (%s)" % (path, what))
    return path


def need_dir(path, what):
    if not os.path.isdir(path):
        raise BnnError("%s: %s (%s)" % (path, "is not a directory" if os.path.exists(path) else "not found", what))
    return path


def is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(directory):
    """Image files under ``directory`` (recursively), as sorted paths; hidden files and folders skipped.

    Symlinked folders are followed, each real folder at most once: a link loop or a second link to
    the same folder would otherwise list its images again (and leak copies into the test split).
    """
    out, seen = [], {os.path.realpath(directory)}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        out.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(out)


def list_subdirs(directory):
    """Sorted names of the non-hidden sub-folders of ``directory``; the hidden ones (``.x``, ``...``:
    never classes) are named in a warning, once per folder."""
    with os.scandir(directory) as it:
        dirs = sorted(e.name for e in it if e.is_dir())
    hidden = [d for d in dirs if d.startswith(".")]
    if hidden and directory not in _WARNED_HIDDEN:
        _WARNED_HIDDEN.add(directory)
        print("warning: %s: hidden folders are not classes, skipped: %s"
              % (directory, ", ".join(printable(d) for d in hidden)), file=sys.stderr, flush=True)
    return [d for d in dirs if not d.startswith(".")]


_WARNED_HIDDEN = set()


def read_lines(path, what):
    _need(path, what)
    try:
        with open(regular_file(path), encoding="utf-8") as f:
            return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise BnnError("%s: cannot read %s (%s)" % (path, what, e)) from None


def _read_table(path, what, ncols):
    """Whitespace-separated rows ``id value...`` -> {int id: [values]} (extra spaces kept in the last column)."""
    rows = {}
    for n, line in read_lines(path, what):
        parts = line.split(None, ncols - 1)
        try:
            if len(parts) != ncols:
                raise ValueError
            key = int(parts[0])
        except ValueError:
            raise BnnError("%s:%d: expected %d columns 'id ...', got %r" % (path, n, ncols, line)) from None
        rows[key] = parts[1:]
    return rows


def from_class_dirs(name, split, root, split_dir, classes, options, class_names=None):
    index = {c: k for k, c in enumerate(classes)}
    sources, labels = [], []
    for c in list_subdirs(split_dir):
        files = list_images(os.path.join(split_dir, c))
        sources.extend(files)
        labels.extend([index[c]] * len(files))
    if not sources:
        raise BnnError("%s: no images (%s) in its class folders" % (split_dir, _EXT_LIST))
    return ImageDataset(name, split, root, classes, sources, labels, class_names, options)


# --- readers ---------------------------------------------------------------------------------------

def _load_mat(path, keys, what):
    _need(path, what)
    import scipy.io  # only this reader needs scipy; the board runtime never imports it otherwise

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise BnnError("%s: cannot read .mat file (%s)" % (path, e)) from None
    out = []
    for k in keys:
        if k not in mat:
            found = sorted(x for x in mat if not x.startswith("__"))
            raise BnnError("%s: has no variable %r (found %s)" % (path, k, found))
        out.append(np.asarray(mat[k]).reshape(-1).astype(np.int64))
    return out


def _flowers(root, split, flowers_split="paper", names_file=None):
    layout = "Flowers102 layout: DIR/jpg/image_00001.jpg, DIR/imagelabels.mat, DIR/setid.mat"
    if flowers_split not in ("paper", "official"):
        raise BnnError("flowers_split=%r: expected 'paper' (6,149 train / 1,020 test) or 'official'" % (flowers_split,))
    jpg = need_dir(os.path.join(root, "jpg"), layout)
    (labels,) = _load_mat(os.path.join(root, "imagelabels.mat"), ["labels"], layout)
    trnid, valid, tstid = _load_mat(os.path.join(root, "setid.mat"), ["trnid", "valid", "tstid"], layout)
    if flowers_split == "paper":
        ids = tstid if split == "train" else trnid
    else:
        ids = np.concatenate([trnid, valid]) if split == "train" else tstid
    ids = np.sort(ids)
    if len(ids) and (ids.min() < 1 or ids.max() > len(labels)):
        raise BnnError("%s: image ids outside 1..%d (the number of labels in imagelabels.mat)"
                       % (os.path.join(root, "setid.mat"), len(labels)))
    num_classes = int(labels.max()) if len(labels) else 0
    classes = ["class_%03d" % (k + 1) for k in range(num_classes)]
    names = None
    if names_file:
        path = names_file if os.path.isabs(names_file) else os.path.join(root, names_file)
        names = [line for _, line in read_lines(path, "class names, one per line")]
        if len(names) != num_classes:
            raise BnnError("%s: %d class names for %d classes" % (path, len(names), num_classes))
    sources = [os.path.join(jpg, "image_%05d.jpg" % i) for i in ids]
    return ImageDataset("flowers102", split, root, classes, sources, labels[ids - 1] - 1, names,
                        {"flowers_split": flowers_split})


def _cub200(root, split):
    layout = "CUB-200-2011 layout: DIR/images.txt, image_class_labels.txt, train_test_split.txt, images/"
    images = _read_table(os.path.join(root, "images.txt"), layout, 2)
    labels = _read_table(os.path.join(root, "image_class_labels.txt"), layout, 2)
    is_train = _read_table(os.path.join(root, "train_test_split.txt"), layout, 2)
    image_dir = need_dir(os.path.join(root, "images"), layout)
    for path, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise BnnError("%s: no entry for image id %d (listed in images.txt)"
                           % (os.path.join(root, path), missing[0]))
    try:
        lab = {i: int(labels[i][0]) - 1 for i in images}
        train = {i: int(is_train[i][0]) == 1 for i in images}
    except ValueError as e:
        raise BnnError("%s: non-integer label or split flag (%s)" % (root, e)) from None
    classes_txt = os.path.join(root, "classes.txt")
    if os.path.exists(classes_txt):
        table = _read_table(classes_txt, "class names", 2)
        classes = [table[k][0] for k in sorted(table)]
    else:
        # The image folders are named after the classes ("001.Black_footed_Albatross").
        by_label = {}
        for i in sorted(images):
            by_label.setdefault(lab[i], images[i][0].replace("\\", "/").split("/")[0])
        classes = [by_label.get(k, "class_%03d" % (k + 1)) for k in range(max(lab.values()) + 1)]
    ids = [i for i in sorted(images) if train[i] == (split == "train")]
    sources = [os.path.join(image_dir, images[i][0]) for i in ids]
    return ImageDataset("cub200", split, root, classes, sources, [lab[i] for i in ids], None, {})


def _indoor67(root, split):
    layout = "MIT Indoor 67 layout: DIR/Images/<class>/*.jpg, DIR/TrainImages.txt, DIR/TestImages.txt"
    image_dir = need_dir(os.path.join(root, "Images"), layout)
    lists = {}
    for s, fn in (("train", "TrainImages.txt"), ("test", "TestImages.txt")):
        path = os.path.join(root, fn)
        entries = []
        for n, line in read_lines(path, layout):
            rel = line.replace("\\", "/")
            if "/" not in rel:
                raise BnnError("%s:%d: expected 'class/file.jpg', got %r" % (path, n, line))
            entries.append(rel)
        lists[s] = entries
    # Both lists define the classes so that labels agree between the splits.
    classes = sorted({rel.split("/")[0] for s in lists for rel in lists[s]})
    index = {c: k for k, c in enumerate(classes)}
    entries = lists[split]
    sources = [os.path.join(image_dir, *rel.split("/")) for rel in entries]
    labels = [index[rel.split("/")[0]] for rel in entries]
    return ImageDataset("indoor67", split, root, classes, sources, labels, None, {})


def _folder(root, split, seed=0, test_fraction=0.2):
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    has_train, has_test = os.path.isdir(train_dir), os.path.isdir(test_dir)
    if has_train and has_test:
        classes = sorted(set(list_subdirs(train_dir)) | set(list_subdirs(test_dir)))
        return from_class_dirs("folder", split, root, train_dir if split == "train" else test_dir, classes,
                                {"layout": "train/test"})
    if has_train != has_test:
        present, absent = (train_dir, test_dir) if has_train else (test_dir, train_dir)
        raise BnnError("%s: not found (found %s; the split layout needs both DIR/train/<class>/ and DIR/test/<class>/, "
                       "the single layout is DIR/<class>/)" % (absent, present))
    try:
        test_fraction = float(test_fraction)
        seed = int(seed)
    except (TypeError, ValueError):
        raise BnnError("folder: seed must be an integer and test_fraction a number") from None
    if not 0.0 <= test_fraction < 1.0:
        raise BnnError("folder: test_fraction=%r must be in [0, 1)" % test_fraction)
    if seed < 0:  # numpy's seed sequences take non-negative integers only
        raise BnnError("folder: seed=%d must be 0 or more" % seed)
    classes = list_subdirs(root)
    if not classes:
        raise BnnError("%s: no class folders (expected DIR/<class>/*.jpg, or DIR/train/<class>/ and DIR/test/<class>/)"
                       % root)
    sources, labels = [], []
    for k, c in enumerate(classes):
        files = list_images(os.path.join(root, c))
        if not files:
            raise BnnError("%s: class folder has no images (%s)" % (os.path.join(root, c), _EXT_LIST))
        n = len(files)
        n_test = int(round(n * test_fraction))
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)  # every class in both splits when it can be
        elif n < 2:
            n_test = 0
        # Seeded per class (not one stream for all): adding a class leaves the others' splits unchanged.
        rng = np.random.default_rng([seed, zlib.crc32(c.encode("utf-8", "surrogateescape"))])
        test_idx = set(rng.permutation(n)[:n_test].tolist())
        keep = [f for j, f in enumerate(files) if (j in test_idx) == (split == "test")]
        sources.extend(keep)
        labels.extend([k] * len(keep))
    return ImageDataset("folder", split, root, classes, sources, labels, None,
                        {"layout": "class folders", "seed": seed, "test_fraction": test_fraction})


@dataclass(frozen=True)
class DatasetSpec:
    """``opener(split, data_dir, **options)`` makes the split once the request is checked: ``options`` are
    the only option names it takes; ``on_disk`` datasets need ``data_dir``, a folder (see ``in_folder``)."""

    name: str
    opener: Callable[..., ImageDataset]
    options: Tuple[str, ...] = ()
    on_disk: bool = True


# How to add a dataset: a reader in a module of its own (``ImageDataset`` is the interface; an on-disk
# layout's reader takes ``(root, split, **options)`` and is wrapped by ``in_folder``), then one
# ``register_dataset`` line here. train/ keeps its own table of pretraining-only datasets on top of this
# one (train/datasets.py). ``--dataset`` choices, option checks and help all come from the table.
DATASETS: Dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, table: Dict[str, DatasetSpec] = DATASETS) -> DatasetSpec:
    if spec.name in table or "+" in spec.name or "." in spec.name:
        raise BnnError("dataset %r: registered already, or a name with '+' or '.' (they form unions)" % spec.name)
    table[spec.name] = spec
    return spec


def in_folder(name, reader):
    """An opener for a dataset read from its on-disk layout under ``data_dir`` by ``reader(root, split, **options)``."""

    def opener(split, data_dir, **options):
        if not data_dir:
            raise BnnError("dataset %s: needs --data-dir (the folder in its official layout)" % name)
        root = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
        need_dir(root, "dataset directory of %s" % name)
        return reader(root, split, **options)

    return opener


def _digits(split, data_dir, **options):
    from .digits import DigitsDataset

    return DigitsDataset(split, data_dir, **options)


def _generated(name):
    return lambda split, data_dir, **options: open_synthetic(name, split, **options)


for _spec in (
    DatasetSpec("flowers102", in_folder("flowers102", _flowers), ("flowers_split", "names_file")),
    DatasetSpec("cub200", in_folder("cub200", _cub200)),
    DatasetSpec("indoor67", in_folder("indoor67", _indoor67)),
    DatasetSpec("folder", in_folder("folder", _folder), ("seed", "test_fraction")),
    DatasetSpec("synthetic", _generated("synthetic"), OPTION_NAMES, on_disk=False),
    DatasetSpec("synthetic-transfer", _generated("synthetic-transfer"), OPTION_NAMES, on_disk=False),
    # data_dir optional: a folder holding a copy of scikit-learn's table, else scikit-learn's own
    DatasetSpec("digits", _digits, ("seed", "test_fraction"), on_disk=False),
):
    register_dataset(_spec)


def dataset_option_names(name):
    """The options ``open_dataset`` accepts for ``name`` (live_classify.ipynb keeps a head's dataset options
    by them)."""
    return tuple(sorted(DATASETS[name].options)) if name in DATASETS else ()


def open_dataset(name, split, data_dir=None, table=DATASETS, **options):
    """The ``split`` ("train" or "test") of dataset ``name`` of ``table``, read from ``data_dir``.

    ``data_dir`` is ignored by the generated datasets. Options are per dataset (``DatasetSpec.options``);
    an unknown one raises BnnError rather than being ignored.
    """
    if name not in table:
        raise BnnError("dataset %r: unknown, choose one of %s" % (name, ", ".join(table)))
    spec = table[name]
    check_request(name, split, spec.options, options)
    return spec.opener(split, data_dir, **options)


def check_request(name, split, option_names, options):
    if split not in SPLITS:
        raise BnnError("split %r: expected 'train' or 'test'" % (split,))
    unknown = sorted(set(options) - set(option_names))
    if unknown:
        raise BnnError("dataset %s: unknown option(s) %s (valid: %s)"
                       % (name, ", ".join(unknown), ", ".join(sorted(option_names)) or "none"))


def check_training_classes(ds):
    """What fitting needs of its train split: two classes with images; a class with none is named."""
    counts = ds.class_counts()
    trained = int((counts > 0).sum())
    if trained < 2:
        names = ", ".join(printable(c) for c, n in zip(ds.classes, counts) if n) or "none"
        raise BnnError("%s: %d class(es) with training images (%s); a classifier needs at least two"
                       % (ds.root, trained, names))
    missing = [printable(c) for c, n in zip(ds.classes, counts) if not n]
    if missing:
        print("warning: %s: no training images for %d class(es), which a head can never predict: %s"
              % (ds.root, len(missing), ", ".join(missing)), file=sys.stderr, flush=True)
