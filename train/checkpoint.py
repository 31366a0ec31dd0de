"""Checkpoints: plain state dicts plus the configs, loadable with ``torch.load(weights_only=True)``.

A checkpoint is written atomically at the end of every epoch, so a killed run loses at most the
epoch in progress and ``--resume`` continues from the last complete one.
"""

import os

import torch

from host.errors import BnnError
from host.manifest import atomic_path

from .models import ModelConfig

FORMAT = "bnn-transfer/checkpoint/v1"
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path, state):
    state = dict(state, format=FORMAT)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, expect_preset=None):
    """Load and sanity-check a checkpoint; every failure is a one-line BnnError naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise BnnError("%s: checkpoint not found" % path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise BnnError("%s: not a readable checkpoint (%s)" % (path, str(e).splitlines()[0][:200])) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BnnError("%s: not a bnn-transfer checkpoint" % path)
    for key in ("model_config", "model", "epoch", "classes", "preprocess"):
        if key not in state:
            raise BnnError("%s: checkpoint lacks %r" % (path, key))
    cfg = ModelConfig.from_dict(state["model_config"])
    if expect_preset is not None and cfg.preset != expect_preset:
        raise BnnError(
            "%s: checkpoint is of preset %r, expected %r" % (path, cfg.preset, expect_preset)
        )
    return state


def load_model_state(model, state, path):
    """load_state_dict with a one-line error instead of torch's multi-line report."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise BnnError("%s: weights do not fit the model (%s)" % (path, first)) from None
