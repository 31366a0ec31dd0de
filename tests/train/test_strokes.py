"""``strokes`` (generated pen strokes) and dataset unions (``synthetic+strokes``), pretraining's data."""

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.train.datasets import dataset_name, open_dataset
from bnn_transfer.train.strokes import glyph, render


def test_strokes_images_are_a_pure_function_of_split_index_and_seed():
    a, b = open_dataset("strokes", "train"), open_dataset("strokes", "train")
    np.testing.assert_array_equal(a.load(7), b.load(7))
    assert a.load(7).shape == (48, 48, 3) and a.load(7).dtype == np.uint8
    assert not np.array_equal(a.load(7), open_dataset("strokes", "test").load(7))
    assert not np.array_equal(a.load(7), open_dataset("strokes", "train", seed=1).load(7))
    assert a.source(7) != open_dataset("strokes", "train", seed=1).source(7)


def test_strokes_classes_are_distinct_glyphs_and_images_show_ink_on_paper():
    ds = open_dataset("strokes", "train", num_classes=5, n_train_per_class=4)
    assert len(ds) == 20 and ds.classes == ["glyph-%03d" % k for k in range(5)]
    assert list(ds.labels[:6]) == [0, 1, 2, 3, 4, 0]
    assert not np.allclose(glyph(0)[0], glyph(1)[0])
    img = render(glyph(0), np.random.default_rng(0), 32)
    # a stroke covers part of the image, not all of it: two clearly different tones
    grey = img.mean(axis=2)
    assert grey.max() - grey.min() > 60


@pytest.mark.parametrize("class_set", [0, 1])
def test_every_image_draws_its_own_class_glyph(monkeypatch, class_set):
    # Found in issue 22: a renamed variable seeded each image's glyph with the image index, so every
    # image showed a glyph of its own and the labels were noise (the backbone learnt nothing from them)
    import bnn_transfer.train.strokes as strokes
    drawn = []
    monkeypatch.setattr(strokes, "render", lambda g, rng, size: drawn.append(g) or np.zeros((size, size, 3), np.uint8))
    ds = open_dataset("strokes", "train", num_classes=3, n_train_per_class=2, class_set=class_set)
    for i in range(len(ds)):
        ds.load(i)
        expected = glyph(3 * class_set + int(ds.labels[i]))
        assert len(drawn[-1]) == len(expected) and all(np.array_equal(a, b) for a, b in zip(drawn[-1], expected))


@pytest.mark.parametrize("options, message", [
    ({"num_classes": 1}, "num_classes=1 must be an integer >= 2"),
    ({"n_train_per_class": 0}, "n_train_per_class=0"),
    ({"colour": 1}, "unknown option(s) colour"),
])
def test_strokes_bad_options_are_one_line_errors(options, message):
    with pytest.raises(BnnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_dataset("strokes", "train", **options)


def test_a_union_lists_its_parts_one_after_the_other():
    syn = open_dataset("synthetic", "train", n_train_per_class=3)
    strokes = open_dataset("strokes", "train", n_train_per_class=3)
    union = open_dataset("synthetic+strokes", "train", n_train_per_class=3)
    assert union.name == "synthetic+strokes" and len(union) == len(syn) + len(strokes)
    assert union.classes == syn.classes + strokes.classes
    np.testing.assert_array_equal(union.labels, np.concatenate([syn.labels, strokes.labels + len(syn.classes)]))
    for i, (part, j) in ((0, (syn, 0)), (len(syn) - 1, (syn, len(syn) - 1)), (len(syn), (strokes, 0)),
                         (len(union) - 1, (strokes, len(strokes) - 1))):
        assert union.source(i) == part.source(j)
        np.testing.assert_array_equal(union.load(i), part.load(j))
    assert union.native_size == 48
    assert union.describe()["options"]["strokes"]["n_train_per_class"] == 3
    assert union.fingerprint() not in (syn.fingerprint(), strokes.fingerprint())
    with pytest.raises(IndexError):
        union.load(len(union))


@pytest.mark.parametrize("name, message", [
    ("synthetic+bogus", "dataset 'bogus': unknown"),
    ("strokes+strokes", "a union names each dataset once"),
])
def test_bad_union_names_are_refused(name, message):
    with pytest.raises(BnnError, match=message):
        dataset_name(name)
    with pytest.raises(BnnError, match=message):
        open_dataset(name, "train")



def test_a_union_option_named_for_a_part_goes_to_that_part_only():
    union = open_dataset("synthetic+strokes", "train", n_train_per_class=3, **{"strokes.n_train_per_class": 2,
                                                                               "strokes.num_classes": 4})
    syn, strokes = union.parts
    assert (len(syn), len(strokes)) == (24 * 3, 4 * 2)
    with pytest.raises(BnnError, match="option folder.seed names no part of it"):
        open_dataset("synthetic+strokes", "train", **{"folder.seed": 1})


def test_a_union_option_keeps_a_hyphenated_part_name():
    from bnn_transfer.host.cli import key_value_options
    from bnn_transfer.train.datasets import open_dataset

    opts = key_value_options(["synthetic-transfer.n-train-per-class=2", "strokes.n_train_per_class=1"])
    assert opts == {"synthetic-transfer.n_train_per_class": 2, "strokes.n_train_per_class": 1}
    assert len(open_dataset("synthetic-transfer+strokes", "train", **opts)) == 10 * 2 + 100
