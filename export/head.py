"""``python -m export head``: the fine-tuned last layer as a numpy head file for host/.

Only the paper's cut (fc3 alone in software) maps onto a host head: a binary fc3 becomes the
``binary`` variant with its BatchNorm folded into a per-class scale and bias, a float fc3 the
``float`` variant.
"""

import os

import numpy as np
import torch

from bnn_transfer.host.artifacts import CHECKPOINT
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.heads import Head, load_head, save_head
from bnn_transfer.host.intlayers import backbone_digest
from bnn_transfer.host.manifest import check_replaceable_file
from bnn_transfer.host.preprocess import Preprocess
from bnn_transfer.train.freeze import fold_backbone, sign_weights

from .backbone import load_trained


def head_from_model(model, classes, meta):
    cfg = model.cfg
    if cfg.cut != "fc3":
        raise BnnError("export head: only the paper's cut (fc3) maps to a host head, this run cuts at %s" % cfg.cut)
    block = model.blocks["fc3"]
    width = model.feature_width
    if cfg.precision == "binary" and cfg.head == "binary":
        lin, bn = block[0], block[1]
        sigma = torch.sqrt(bn.running_var.double() + bn.eps)
        scale = (bn.weight.double() / sigma).detach()
        bias = (bn.bias.double() - bn.running_mean.double() * scale).detach()
        params = {"W": sign_weights(lin.weight).T.copy(), "scale": scale.float().numpy(),
                  "bias": bias.float().numpy()}
        variant = "binary"
    else:
        lin = block[0]
        params = {"W": lin.weight.detach().float().numpy().T.copy(), "b": lin.bias.detach().float().numpy()}
        variant = "float"
    return Head(variant, list(classes), width, params, meta)


def export_head(run_dir, out):
    check_replaceable_file(out, load_head, "head")
    state, mcfg, model = load_trained(run_dir)
    if state.get("mode") != "finetune":
        raise BnnError("%s: not a fine-tuned run (python -m train finetune); its head is the pretraining "
                       "classifier" % os.path.join(run_dir, CHECKPOINT))
    # the three keys host.bundle.check_head_compatible compares with the bundle built from this run
    meta = {
        "feature_width": model.feature_width,
        "preprocess": Preprocess.from_dict(state["preprocess"]).to_dict(),
        "backbone_digest": backbone_digest(fold_backbone(model)) if mcfg.precision == "binary" else None,
        "preset": mcfg.preset,
        "source": {"run": os.path.abspath(run_dir), "epoch": int(state["epoch"]),
                   "test_top1": state.get("metrics", {}).get("test_top1")},
    }
    head = head_from_model(model, state["classes"], meta)
    save_head(out, head)
    return head


def torch_logits(model, features):
    """The run's own fc3 on +-1 features: the reference the host head must reproduce."""
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(features, dtype=np.float32)), start="fc3").numpy()
