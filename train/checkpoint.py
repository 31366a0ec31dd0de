"""Checkpoints: plain state dicts plus the configs, loadable with ``torch.load(weights_only=True)``.

A checkpoint is written atomically at the end of every epoch, so a killed run loses at most the
epoch in progress and ``--resume`` continues from the last complete one.
"""

import os

import torch

from bnn_transfer.host.artifacts import CHECKPOINT
from bnn_transfer.host.atomic import atomic_path
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.preprocess import Preprocess

from .models import ModelConfig

FORMAT = "bnn-transfer/checkpoint/v1"


FIELDS = {"model_config": dict, "model": dict, "epoch": int, "classes": list, "preprocess": dict}


def _reason(e):
    """One line of torch's message, never its advice to load the file unsafely."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    if lines[0].startswith("Weights only load failed"):
        detail = next((line for line in lines if "GLOBAL" in line), "objects other than tensors")
        return "it holds code to run on loading, refused: %s" % detail[:200]
    return lines[0][:200]


class _Sink:
    """A file wrapper that keeps the OSError torch.save turns into an anonymous RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def save_checkpoint(path, state):
    state = dict(state, format=FORMAT)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(state, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None  # e.g. ENOSPC; atomic_path names the file


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
        raise BnnError("%s: not a readable checkpoint (%s)" % (path, _reason(e))) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BnnError("%s: not a bnn-transfer checkpoint" % path)
    for key, kind in FIELDS.items():
        if key not in state:
            raise BnnError("%s: checkpoint lacks %r" % (path, key))
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise BnnError("%s: checkpoint field %r is a %s, expected %s"
                           % (path, key, type(state[key]).__name__, kind.__name__))
    if state["epoch"] < 0:
        raise BnnError("%s: checkpoint field 'epoch' is %d, expected >= 0" % (path, state["epoch"]))
    if not state["classes"] or not all(isinstance(c, str) for c in state["classes"]):
        raise BnnError("%s: checkpoint field 'classes' must be a non-empty list of names" % path)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise BnnError("%s: checkpoint field 'model' must map parameter names to tensors" % path)
    try:
        Preprocess.from_dict(state["preprocess"])
    except BnnError as e:
        raise BnnError("%s: %s" % (path, e)) from None
    cfg = ModelConfig.from_dict(state["model_config"], where=path)
    if cfg.num_classes != len(state["classes"]):
        raise BnnError("%s: checkpoint has %d class names for %d outputs" % (path, len(state["classes"]),
                                                                            cfg.num_classes))
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
