"""What a Table 2 row stands for and what its run directory holds, read by the table (planning,
resuming) and by its report alike: the datasets behind a row's key, and the state of a row's run."""

import os

from bnn_transfer.host.artifacts import CHECKPOINT, RUN_MANIFEST
from bnn_transfer.host.manifest import read_json

from .checkpoint import load_checkpoint
from .fit import FitConfig
from .table2_paper import TARGETS

# --synthetic: the generated stand-in of each of the paper's datasets (dataset name, options at scale 1)
SYNTHETIC_STANDINS = {
    "imagenet": ("synthetic", {"num_classes": 24, "n_train_per_class": 250, "n_test_per_class": 40,
                               "image_size": 40, "seed": 0}),
    "flowers": ("synthetic-transfer", {"num_classes": 12, "n_train_per_class": 48, "n_test_per_class": 10,
                                       "image_size": 40, "seed": 1}),
    "birds": ("synthetic-transfer", {"num_classes": 20, "n_train_per_class": 24, "n_test_per_class": 24,
                                     "image_size": 40, "seed": 2}),
    "indoor": ("synthetic-transfer", {"num_classes": 8, "n_train_per_class": 64, "n_test_per_class": 16,
                                      "image_size": 40, "seed": 3}),
}


def source_of(cfg, key):
    """(dataset name, data_dir, options) that stands for ``key`` (imagenet, flowers, birds, indoor)."""
    if cfg.synthetic:
        name, opts = SYNTHETIC_STANDINS[key]
        opts = dict(opts)
        for k in ("n_train_per_class", "n_test_per_class"):
            opts[k] = max(1, int(round(opts[k] * cfg.synthetic_scale)))
        return name, None, opts
    name = "imagenet" if key == "imagenet" else dataset_of(key)
    return name, os.path.abspath(getattr(cfg, key)), {}


def dataset_of(key):
    return next(t.dataset for t in TARGETS if t.key == key)


def read_row(job):
    """(params, mode, finished, epochs done, manifest) of what the row's directory holds, or None."""
    out = job.fit.out
    manifest = os.path.join(out, RUN_MANIFEST)
    if os.path.exists(manifest):
        m = read_json(manifest, "run manifest")
        return m.get("params"), m.get("mode"), bool(m.get("finished")), int(m.get("epochs_done", 0)), m
    ckpt = os.path.join(out, CHECKPOINT)
    if os.path.exists(ckpt):
        # Killed between its first checkpoint and its first manifest: the checkpoint has the config.
        state = load_checkpoint(ckpt)
        return FitConfig(**state["fit_config"]).identity(), state.get("mode"), False, int(state["epoch"]), None
    return None
