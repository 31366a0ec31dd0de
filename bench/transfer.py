"""Do the frozen features transfer to real images? ``transfer/<dataset>`` lines.

On a real labelled image set (``digits``: handwritten scans that install with scikit-learn, never
seen in pretraining) three inputs go into the same heads:

- ``frozen``: the binary features of the pretrained backbone of ``--demo-bundle`` (its emulator,
  bit-exact with the accelerator);
- ``random``: the binary features of the same preset with random weights, its BatchNorm statistics
  measured on the task's own training images (thresholds at the median-like point where random
  binary features carry the most information: the fairest random baseline);
- ``pixels``: the preprocessed input itself (input_size x input_size x 3 bytes scaled to [0, 1]).

Heads: host's float head (``HeadConfig()``, the board's) on the binary features, and scikit-learn's
``LogisticRegression()`` on all three. Targets (issue 15): frozen beats random with host's head, and
comes within 5 points of logistic regression on the raw pixels.
"""

import warnings

import numpy as np

DATASETS = ("digits",)
NAMES = tuple("transfer/%s" % d for d in DATASETS)
PIXEL_MARGIN = 0.05  # frozen features may trail logistic regression on pixels by at most 5 points


def _images(dataset, pp, indices=None):
    from bnn_transfer.host.preprocess import eval_transform

    indices = range(len(dataset)) if indices is None else indices
    return np.stack([eval_transform(dataset.load(i), pp) for i in indices])


def random_backbone(preset, train_images, seed=0):
    """A random ``preset`` backbone (``train.freeze.IntegerBackbone``) with BatchNorm statistics of ``train_images``."""
    import torch
    from torch import nn

    from bnn_transfer.train.freeze import IntegerBackbone, fold_backbone
    from bnn_transfer.train.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(preset=preset, num_classes=10))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average: the statistics of exactly these images
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(train_images.transpose(0, 3, 1, 2).copy()).float())
    model.eval()
    return IntegerBackbone(fold_backbone(model))


def torch_layers(backbone):
    """``layer_outputs(images)`` of a torch IntegerBackbone, as the emulator has it."""
    import torch

    def layer_outputs(images):
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float()
        return [o.numpy() for o in backbone(x, return_all=True)]

    return layer_outputs


def _packed_layers(layer_outputs, images, batch=128):
    """Every layer's output of ``layer_outputs(batch) -> [+-1 arrays]`` for all ``images``, packed per layer."""
    from bnn_transfer.host.features import pack_features

    parts = None
    for i in range(0, len(images), batch):
        outs = [pack_features(np.asarray(o).reshape(len(o), -1)) for o in layer_outputs(images[i:i + batch])]
        parts = [[p] for p in outs] if parts is None else [ps + [p] for ps, p in zip(parts, outs)]
    return [np.concatenate(ps) for ps in parts]


def by_layer(layer_outputs, names, img_tr, ytr, img_te, yte, classes):
    """Top-1 of host's float head on each layer's output: where the backbone loses the task's information."""
    from bnn_transfer.host.heads import HeadConfig, evaluate, fit_head

    tr, te = _packed_layers(layer_outputs, img_tr), _packed_layers(layer_outputs, img_te)
    widths = [int(np.prod(o.shape[1:])) for o in layer_outputs(img_tr[:1])]
    out = {}
    for name, width, a, b in zip(names, widths, tr, te):
        head, _ = fit_head(a, ytr, classes, HeadConfig(), progress=False, feature_width=width)
        out[name] = {"width": width, "top1": round(evaluate(head, b, yte)["top1"], 4)}
    return out


def _sklearn(xtr, ytr, xte, yte):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    p = clf.predict_proba(xte)
    top = np.argsort(-p, axis=1)[:, :5]
    return {"top1": float(np.mean(top[:, 0] == yte)), "top5": float(np.mean((top == yte[:, None]).any(axis=1)))}


def _host(xtr, ytr, xte, yte, classes):
    from bnn_transfer.host.heads import HeadConfig, evaluate, fit_head

    head, _ = fit_head(xtr, ytr, classes, HeadConfig(), progress=False)
    r = evaluate(head, xte, yte)
    return {"top1": r["top1"], "top5": r["top5"], "l2": head.meta["train"]["l2"]["value"]}


def measure(bundle, dataset_name, seed=0, log=lambda msg: None):
    """The transfer record of ``dataset_name`` for ``bundle`` (a loaded deploy bundle, the demo's)."""
    from bnn_transfer.host.datasets import open_dataset
    from bnn_transfer.host.emulator import load_emulator
    from bnn_transfer.host.preprocess import Preprocess

    pp = Preprocess.from_dict(bundle.preprocess)
    train_ds, test_ds = open_dataset(dataset_name, "train"), open_dataset(dataset_name, "test")
    ytr, yte = train_ds.labels, test_ds.labels
    classes = list(train_ds.classes)
    log("transfer/%s: preprocessing %d + %d images to %d px" % (dataset_name, len(ytr), len(yte), pp.input_size))
    img_tr, img_te = _images(train_ds, pp), _images(test_ds, pp)
    log("transfer/%s: frozen features (emulator of %s)" % (dataset_name, bundle.root))
    from bnn_transfer.host.backends import make_backend

    with make_backend("emulator", bundle) as backend:
        frozen = [backend.extract(imgs, batch_size=256) for imgs in (img_tr, img_te)]
    emulator = load_emulator(bundle.emulator_path)
    log("transfer/%s: random backbone of the %s preset" % (dataset_name, bundle.preset))
    random_layers = torch_layers(random_backbone(bundle.preset, img_tr, seed))
    random = [np.concatenate([random_layers(imgs[i:i + 256])[-1] for i in range(0, len(imgs), 256)]).reshape(
        len(imgs), -1).astype(np.int8) for imgs in (img_tr, img_te)]
    rows = {}
    for name, (ftr, fte) in (("frozen", frozen), ("random", random)):
        log("transfer/%s: heads on %s features" % (dataset_name, name))
        rows[name] = {"host": _host(ftr, ytr, fte, yte, classes),
                      "sklearn": _sklearn(ftr.astype(np.float32), ytr, fte.astype(np.float32), yte)}
    log("transfer/%s: logistic regression on the pixels" % dataset_name)
    pix = [imgs.reshape(len(imgs), -1).astype(np.float32) / 255.0 for imgs in (img_tr, img_te)]
    rows["pixels"] = {"sklearn": _sklearn(pix[0], ytr, pix[1], yte)}
    log("transfer/%s: host's head on every layer of both backbones" % dataset_name)
    names = [layer["name"] for layer in emulator.layers]
    layers = {"frozen": by_layer(emulator.layer_outputs, names, img_tr, ytr, img_te, yte, classes),
              "random": by_layer(random_layers, names, img_tr, ytr, img_te, yte, classes)}
    frozen_top1, random_top1 = rows["frozen"]["host"]["top1"], rows["random"]["host"]["top1"]
    pixels_top1 = rows["pixels"]["sklearn"]["top1"]
    met = frozen_top1 > random_top1 and frozen_top1 >= pixels_top1 - PIXEL_MARGIN
    rec = {"name": "transfer/%s" % dataset_name, "kind": "accuracy", "ours_s": None, "theirs_s": None,
           "speedup": None, "identical": None,
           "target": "frozen > random backbone, and >= pixels - %d pt (top-1, host float head)" % (100 * PIXEL_MARGIN),
           "met": met, "dataset": dataset_name, "train": int(len(ytr)), "test": int(len(yte)),
           "classes": len(classes), "input_size": pp.input_size, "feature_width": int(bundle.feature_width),
           "bundle": bundle.root, "preset": bundle.preset, "rows": rows, "by_layer": layers}
    if not met:
        parts = []
        if frozen_top1 <= random_top1:
            parts.append("frozen features %.1f%% do not beat a random backbone's %.1f%%"
                         % (100 * frozen_top1, 100 * random_top1))
        if frozen_top1 < pixels_top1 - PIXEL_MARGIN:
            parts.append("frozen features %.1f%% trail logistic regression on the pixels (%.1f%%) by %.1f points"
                         % (100 * frozen_top1, 100 * pixels_top1, 100 * (pixels_top1 - frozen_top1)))
        rec["gap"] = "; ".join(parts) + " (where the information is lost: the per-layer line under the table)"
    return rec


def run(ctx):
    from .measure import skipped

    for dataset_name, name in zip(DATASETS, NAMES):
        if not ctx.wanted(name):
            continue
        if not ctx.demo_bundle:
            yield skipped(name, "needs --demo-bundle DIR (the demo's deploy bundle, runs/demo/deploy/pynq-z2)")
            continue
        from bnn_transfer.host.bundle import load_bundle

        yield measure(load_bundle(ctx.demo_bundle), dataset_name, ctx.seed, ctx.log)
