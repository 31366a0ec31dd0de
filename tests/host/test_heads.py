"""host.heads: the software last layer, its file format, its training and its evaluation."""

import dataclasses
import os
import tracemalloc

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.features import pack_features, unpack_features
from bnn_transfer.host.heads import (
    HEAD_FORMAT,
    Head,
    HeadConfig,
    evaluate,
    fit_head,
    load_head,
    predict_topk,
    save_head,
)
from bnn_transfer.host.heads.fit import _fit_inverse_temperature, stratified_split


def prototypes(n, d, c, flip, seed):
    """Features with structure: class prototypes in {-1,+1}^d, each bit flipped with prob ``flip``."""
    rng = np.random.default_rng(seed)
    protos = rng.choice(np.array([-1, 1], np.int8), (c, d))
    y = rng.permutation(np.arange(n) % c)
    x = protos[y]
    x[rng.random((n, d)) < flip] *= -1
    return x, y


@pytest.fixture(scope="module")
def data():
    x, y = prototypes(900, 192, 6, 0.38, seed=0)
    return (x[:600], y[:600]), (x[600:], y[600:])


def random_head(variant, d=20, c=4, h=7, seed=0, **kw):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if variant == "float":
        params = {"W": rng.standard_normal((d, c)).astype(f32), "b": rng.standard_normal(c).astype(f32)}
    elif variant == "binary":
        params = {"W": rng.choice(np.array([-1, 1], np.int8), (d, c)), "scale": rng.random(c).astype(f32) + 0.1,
                  "bias": rng.standard_normal(c).astype(f32)}
    else:
        params = {"W1": rng.standard_normal((d, h)).astype(f32), "b1": rng.standard_normal(h).astype(f32),
                  "W2": rng.standard_normal((h, c)).astype(f32), "b2": rng.standard_normal(c).astype(f32)}
    classes = kw.pop("classes", ["class %d" % i for i in range(c)])
    return Head(variant, classes, d, params, **kw)


def reference_logits(head, x):
    x = x.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in head.params.items()}
    if head.variant == "float":
        return x @ p["W"] + p["b"]
    if head.variant == "binary":
        return (x @ p["W"]) * p["scale"] + p["bias"]
    return np.maximum(x @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]


# ----------------------------------------------------------------------------------- logits


@pytest.mark.parametrize("variant", ["float", "binary", "mlp"])
def test_logits_follow_the_variant_formula_for_every_input_form(variant):
    head = random_head(variant)
    x = np.random.default_rng(1).choice(np.array([-1, 1], np.int8), (37, 20))
    ref = reference_logits(head, x)
    for form in (x, x.astype(np.float32), pack_features(x)):
        z = head.logits(form, batch_size=8)  # several blocks
        assert z.dtype == np.float32 and z.shape == (37, 4)
        np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(head.logits(x[5]), ref[5], rtol=1e-5, atol=1e-4)


def test_logits_reject_features_of_another_width():
    head = random_head("float", d=20)
    with pytest.raises(BnnError, match="expects 20"):
        head.logits(np.ones((2, 21), np.float32))
    with pytest.raises(BnnError, match="packed bytes per row, the head expects 3"):
        head.logits(np.zeros((2, 2), np.uint8))


def test_predict_topk_and_evaluate():
    head = random_head("float", d=20, c=7)
    x = np.random.default_rng(2).choice(np.array([-1, 1], np.int8), (50, 20))
    z = reference_logits(head, x)
    idx, prob = predict_topk(head, x, k=3)
    assert np.array_equal(idx, np.argsort(-z, axis=1)[:, :3])
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prob, np.take_along_axis(p, idx, axis=1), rtol=1e-4)
    assert np.all(np.diff(prob, axis=1) <= 0)

    order = np.argsort(-z, axis=1)
    labels = np.where(np.arange(50) % 3 == 0, order[:, 0], order[:, 4])  # 17 top-1 hits, all top-5
    labels[-1] = order[-1, 6]  # one miss even for top-5
    r = evaluate(head, x, labels, confusion=True)
    assert r["n"] == 50 and r["top1"] == pytest.approx(17 / 50) and r["top5"] == pytest.approx(49 / 50)
    cm = r["confusion"]
    assert cm.shape == (7, 7) and cm.sum() == 50 and np.trace(cm) == 17
    assert np.array_equal(cm.sum(axis=1), np.bincount(labels, minlength=7))
    with pytest.raises(BnnError, match="labels must lie in"):
        evaluate(head, x, np.full(50, 7))
    with pytest.raises(BnnError, match="49 labels"):
        evaluate(head, x, labels[:49])


def test_head_validation():
    with pytest.raises(BnnError, match="unknown head variant"):
        random_head("svm")
    with pytest.raises(BnnError, match="duplicate class names"):
        random_head("float", classes=["a", "b", "a", "c"])
    good = random_head("binary")
    with pytest.raises(BnnError, match="binary weights W must be -1 or \\+1"):
        Head("binary", good.classes, 20, dict(good.params, W=np.zeros((20, 4))))
    with pytest.raises(BnnError, match="parameter W has shape"):
        Head("float", ["a", "b"], 5, {"W": np.zeros((5, 3)), "b": np.zeros(2)})
    with pytest.raises(BnnError, match="needs parameters"):
        Head("float", ["a", "b"], 5, {"W": np.zeros((5, 2))})
    with pytest.raises(BnnError, match="NaN"):
        Head("float", ["a", "b"], 1, {"W": np.array([[np.nan, 0]]), "b": np.zeros(2)})
    # float64 from code (e.g. torch tensors) is accepted and stored as float32
    h = Head("float", ["a", "b"], 5, {"W": np.zeros((5, 2)), "b": np.zeros(2)})
    assert h.params["W"].dtype == np.float32


# ------------------------------------------------------------------------------------- file


@pytest.mark.parametrize("variant", ["float", "binary", "mlp"])
def test_save_load_roundtrip(tmp_path, variant):
    head = random_head(variant, classes=["Rose", "Tiger lily", "Löwenzahn", "花"],
                       meta={"preprocess": {"size": 32, "layout": "NHWC"}, "backbone_sha256": "ab" * 32})
    path = str(tmp_path / "head.npz")
    save_head(path, head)
    assert os.listdir(str(tmp_path)) == ["head.npz"]
    back = load_head(path)
    assert back.variant == variant and back.classes == head.classes and back.feature_width == 20
    assert back.meta == head.meta
    assert sorted(back.params) == sorted(head.params)
    for k, v in head.params.items():
        assert back.params[k].dtype == v.dtype and np.array_equal(back.params[k], v)
    with np.load(path, allow_pickle=False) as z:  # plain numpy can read it
        assert str(z["format"]) == HEAD_FORMAT and z["classes"].dtype.kind == "U"


def test_save_keeps_the_exact_name(tmp_path):
    path = str(tmp_path / "head.bin")  # np.savez would have appended ".npz" to a name
    save_head(path, random_head("float"))
    assert os.listdir(str(tmp_path)) == ["head.bin"] and load_head(path).variant == "float"


def _rewrite(src, dst, **changes):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(dst, **arrays)


@pytest.mark.parametrize("change, message", [
    ({"W": None}, "needs parameters"),
    ({"W": np.zeros((20, 4), np.float64)}, "parameter W has dtype float64, expected float32"),
    ({"b": np.zeros(5, np.float32)}, "parameter b has shape"),
    ({"classes": np.array(["a", "b", "c"])}, "parameter W has shape"),
    ({"feature_width": np.array(21)}, "parameter W has shape"),
    ({"meta": np.array("{not json")}, "meta is not valid JSON"),
    ({"meta": np.array("[1, 2]")}, "meta must be a JSON object"),
    ({"version": np.array(2)}, "version 2"),
    ({"format": np.array("bnn-transfer/features")}, "not a bnn-transfer head file"),
    ({"variant": np.array("svm")}, "unknown head variant"),
    ({"classes": None}, "lacks classes"),
    ({"classes": np.array([["a", "b"], ["c", "d"]])}, "1-D string array"),
    ({"extra": np.zeros(1)}, "needs parameters"),
])
def test_load_rejects_bad_files_naming_the_path(tmp_path, change, message):
    good = str(tmp_path / "good.npz")
    save_head(good, random_head("float"))
    bad = str(tmp_path / "bad.npz")
    _rewrite(good, bad, **change)
    with pytest.raises(BnnError, match="bad.npz: .*" + message):
        load_head(bad)


def test_load_rejects_missing_truncated_and_pickled_files(tmp_path):
    with pytest.raises(BnnError, match="nope.npz: head file not found"):
        load_head(str(tmp_path / "nope.npz"))
    good = str(tmp_path / "good.npz")
    save_head(good, random_head("mlp"))
    data = open(good, "rb").read()
    bad = str(tmp_path / "trunc.npz")
    open(bad, "wb").write(data[:-100])
    with pytest.raises(BnnError, match="trunc.npz: "):
        load_head(bad)
    bad = str(tmp_path / "pickled.npz")
    _rewrite(good, bad, classes=np.array(["a", None, "c", "d"], dtype=object))
    with pytest.raises(BnnError, match="pickled.npz: not a readable head file"):
        load_head(bad)


def test_save_rejects_meta_that_is_not_json(tmp_path):
    head = random_head("float", meta={"when": object()})
    with pytest.raises(BnnError, match="h.npz: head meta is not JSON"):
        save_head(str(tmp_path / "h.npz"), head)
    assert not os.listdir(str(tmp_path))


# --------------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant, floor", [("float", 0.85), ("binary", 0.75), ("mlp", 0.75)])
def test_fit_learns_structured_features(data, variant, floor):
    (x, y), (xt, yt) = data
    classes = ["c%d" % i for i in range(6)]
    head, hist = fit_head(pack_features(x), y, classes, HeadConfig(variant=variant, epochs=40, seed=3),
                          progress=False, feature_width=192, meta={"backbone_sha256": "00" * 32})
    assert head.variant == variant and head.classes == classes and head.feature_width == 192
    r = evaluate(head, xt, yt)
    assert r["top1"] > floor, r  # chance is 1/6
    info = head.meta["train"]
    assert head.meta["backbone_sha256"] == "00" * 32
    assert info["n_train"] + info["n_val"] == 600 and abs(info["n_val"] - 60) <= 3
    # the head kept is the best validation epoch, not the last one
    assert info["val_top1"] == max(h["val_top1"] for h in hist if "val_top1" in h)
    if variant == "binary":
        assert head.params["W"].dtype == np.int8 and set(np.unique(head.params["W"])) <= {-1, 1}


def test_fit_is_deterministic_and_input_form_does_not_matter(data):
    (x, y), _ = data
    cfg = HeadConfig(variant="binary", epochs=3, seed=7)
    a, ha = fit_head(pack_features(x), y, list("abcdef"), cfg, progress=False, feature_width=192)
    b, hb = fit_head(x.astype(np.float32), y, list("abcdef"), cfg, progress=False)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]
    c, _ = fit_head(x, y, list("abcdef"), HeadConfig(variant="binary", epochs=3, seed=8), progress=False)
    assert not np.array_equal(a.params["W"], c.params["W"])


def test_validation_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(5), [40, 20, 10, 3, 1])
    train, val = stratified_split(y, 0.1, np.random.default_rng(0))
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(y.size))
    assert np.bincount(y[val], minlength=5).tolist() == [4, 2, 1, 0, 0]  # a class keeps >= 1 training row
    again = stratified_split(y, 0.1, np.random.default_rng(0))[1]
    other = stratified_split(y, 0.1, np.random.default_rng(1))[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_temperature_fit_recovers_the_true_one():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((20000, 5))
    p = np.exp(2.5 * z)
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) < rng.random((20000, 1))).sum(axis=1)  # labels drawn from softmax(2.5 z)
    assert _fit_inverse_temperature(z, y) == pytest.approx(2.5, rel=0.05)
    # labels unrelated to the logits want b -> 0, which would erase the head: bounded instead
    noise = rng.integers(0, 5, 20000)
    assert 1e-2 <= _fit_inverse_temperature(z, noise) < 0.05


def test_calibration_changes_confidence_not_predictions(data):
    (x, y), (xt, yt) = data
    cfg = HeadConfig(epochs=10)
    raw, _ = fit_head(x, y, list("abcdef"), dataclasses.replace(cfg, calibrate=False), progress=False)
    cal, _ = fit_head(x, y, list("abcdef"), cfg, progress=False)
    t = cal.meta["train"]["temperature"]
    assert raw.meta["train"]["temperature"] == 1.0 and t != 1.0
    np.testing.assert_allclose(cal.logits(xt), raw.logits(xt) / t, rtol=1e-4, atol=1e-4)

    def nll(head):
        z = head.logits(xt).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(yt.size), yt])

    assert nll(cal) < nll(raw)


def test_early_stopping_stops(data):
    (x, y), _ = data
    cfg = HeadConfig(solver="adam", epochs=200, patience=2, lr=0.1, weight_decay=0.0)
    head, hist = fit_head(x, y, list("abcdef"), cfg, progress=False)
    assert len(hist) < 200
    assert len(hist) - head.meta["train"]["best_epoch"] == 2


def test_refit_and_no_validation(data):
    (x, y), (xt, yt) = data
    head, hist = fit_head(x, y, list("abcdef"), HeadConfig(solver="adam", epochs=30, refit=True), progress=False)
    best = head.meta["train"]["best_epoch"]
    assert [h["phase"] for h in hist].count("refit") == best
    assert evaluate(head, xt, yt)["top1"] > 0.85
    head, hist = fit_head(x, y, list("abcdef"), HeadConfig(solver="adam", epochs=3, val_fraction=0.0), progress=False)
    assert len(hist) == 3 and "val_top1" not in hist[0] and head.meta["train"]["n_val"] == 0


def test_fit_rejects_bad_input():
    x = np.ones((4, 16), np.int8)
    with pytest.raises(BnnError, match="labels must lie in"):
        fit_head(x, [0, 1, 2, 3], ["a", "b"], progress=False)
    with pytest.raises(BnnError, match="3 labels for 4"):
        fit_head(x, [0, 1, 0], ["a", "b"], progress=False)
    with pytest.raises(BnnError, match="-1 or \\+1"):
        fit_head(np.zeros((4, 16), np.int8), [0, 1, 0, 1], ["a", "b"], progress=False)
    with pytest.raises(BnnError, match="cannot hold 17"):
        fit_head(np.zeros((4, 2), np.uint8), [0, 1, 0, 1], ["a", "b"], progress=False, feature_width=17)
    with pytest.raises(BnnError, match="unknown head variant"):
        fit_head(x, [0, 1, 0, 1], ["a", "b"], HeadConfig(variant="svm"), progress=False)


def test_training_never_unpacks_all_rows_at_once():
    # 4,000 x 1,024 features: 0.5 MB packed, 16 MB as float32. Unpacking per minibatch must keep
    # the peak of traced allocations (numpy reports its buffers to tracemalloc) to a fraction.
    x, y = prototypes(4000, 1024, 10, 0.4, seed=5)
    packed = pack_features(x)
    del x
    full = packed.shape[0] * 1024 * 4

    tracemalloc.start()
    unpack_features(packed, 1024)  # the control: the measurement does see a whole unpack
    control = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert control >= full

    for solver in ("lbfgs", "adam"):
        tracemalloc.start()
        fit_head(packed, y, ["c%d" % i for i in range(10)], HeadConfig(solver=solver, epochs=2, path_iter=1,
                                                                       batch_size=128), progress=False,
                 feature_width=1024)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < full / 4, "%s training peaked at %.1f MB of allocations; all rows unpacked are %.1f MB" % (
            solver, peak / 2**20, full / 2**20)


def test_float_head_is_as_accurate_as_sklearn(data):
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is not installed (bench-only)")
    (x, y), (xt, yt) = data
    theirs = sklearn.LogisticRegression(max_iter=1000).fit(x.astype(np.float32), y).score(xt.astype(np.float32), yt)
    head, _ = fit_head(x, y, list("abcdef"), HeadConfig(), progress=False)
    ours = evaluate(head, xt, yt)["top1"]
    assert ours >= theirs - 0.02, (ours, theirs)



# ------------------------------------------------------------------------------- L2 selection


def _fit_and_score(n, d, c, flip, n_train, seed, **cfg):
    x, y = prototypes(n, d, c, flip, seed)
    head, hist = fit_head(x[:n_train], y[:n_train], ["c%d" % i for i in range(c)], HeadConfig(**cfg), progress=False)
    return head, hist, evaluate(head, x[n_train:], y[n_train:])["top1"]


def test_l2_is_chosen_on_held_out_rows_and_differs_between_regimes():
    # few noisy rows in many dimensions: the path settles on a moderate L2 and beats a strong one
    noisy, hist, acc = _fit_and_score(1200, 1024, 4, 0.47, 240, seed=2)
    l2 = noisy.meta["train"]["l2"]
    assert l2["chosen_by"] == "held-out accuracy" and noisy.meta["train"]["solver"] == "lbfgs"
    scored = [h for h in hist if h["phase"] == "l2-path"]
    assert len(scored) >= 3 and [h["l2"] for h in scored] == sorted(l2["grid"], reverse=True)[:len(scored)]
    best = max(scored, key=lambda h: (h["val_top1"], -h["val_loss"]))
    assert l2["value"] == best["l2"] and noisy.meta["train"]["val_top1"] == best["val_top1"]
    assert hist[-1]["phase"] == "refit" and noisy.meta["train"]["refit"]
    _, _, strong = _fit_and_score(1200, 1024, 4, 0.47, 240, seed=2, weight_decay=1e-1)  # over-regularised
    assert acc > strong + 0.1, (acc, strong)
    # many clean rows: nothing to regularise, the path runs to its weakest L2
    clean, _, acc_clean = _fit_and_score(3000, 256, 8, 0.3, 2400, seed=1)
    assert clean.meta["train"]["l2"]["value"] == min(l2["grid"]) < l2["value"] and acc_clean > 0.95


def test_too_small_held_out_split_falls_back_and_says_so():
    # 10 per class: a tenth would hold out 4 rows; the float head holds out MIN_VAL_ROWS (half at most), since
    # the chosen L2 is refitted on every row anyway
    x, y = prototypes(40, 64, 4, 0.2, seed=3)
    head, _ = fit_head(x, y, list("abcd"), HeadConfig(), progress=False)
    assert head.meta["train"]["n_val"] == 20 and head.meta["train"]["l2"]["chosen_by"] == "held-out accuracy"
    assert head.meta["train"]["refit"]
    x, y = prototypes(24, 64, 4, 0.2, seed=3)  # 6 per class: half is 12 rows, too few
    head, _ = fit_head(x, y, list("abcd"), HeadConfig(), progress=False)
    l2 = head.meta["train"]["l2"]
    assert l2["chosen_by"] == "fallback" and l2["value"] > 0 and "held-out split too small" in l2["reason"]
    head, _ = fit_head(x, y, list("abcd"), HeadConfig(val_fraction=0.0), progress=False)
    assert head.meta["train"]["l2"]["chosen_by"] == "fallback" and head.meta["train"]["n_val"] == 0
    head, _ = fit_head(x, y, list("abcd"), HeadConfig(weight_decay=1e-3), progress=False)
    assert head.meta["train"]["l2"] == {"value": 1e-3, "chosen_by": "config"}


def test_fewer_than_two_classes_with_rows_is_an_error():
    x = np.ones((6, 16), np.int8)
    with pytest.raises(BnnError, match="hold one of 3 classes \\(b\\); a classifier needs at least two"):
        fit_head(x, [1] * 6, ["a", "b", "c"], progress=False)
