"""The frozen backbone, defined by integers.

After training, every frozen block "conv/linear -> BatchNorm -> sign" is folded into
+-1 weights and one integer threshold per output channel:

    out = +1  if  acc >= T  else  -1,     acc = sum(w * x)  (an integer: x is uint8 or +-1)

A BatchNorm with a negative scale flips the comparison; the flip is folded into the weights
(negating a +-1 row is exact), so every channel compares with ``>=``. Thresholds are clamped to
the accumulator's reachable range, which changes no output and keeps them small integers.

Why: where a float BatchNorm lands exactly on zero, the sign depends on the order of floating-point
operations, and torch, ONNX and FINN then disagree. With integer thresholds every stage computes the
same bits by construction. The layers themselves (``IntLayer``, ``backbone_digest``) are numpy
data in ``host/intlayers.py``; ``IntegerBackbone`` is the torch evaluator of that definition (used
to fine-tune heads and as the reference the export verifies against).
"""

from typing import List, Optional

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantLinear
from torch import nn
from torch.nn import functional as F

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.intlayers import IntLayer

from .models import AlexNet


def sign_weights(w: torch.Tensor) -> np.ndarray:
    """Brevitas' binary sign: w >= 0 -> +1 (so a latent 0 is +1, as in training)."""
    return np.where(w.detach().cpu().numpy() >= 0, 1, -1).astype(np.int8)


def fold_threshold(bn: nn.modules.batchnorm._BatchNorm, bound: int):
    """(flip, T) per channel such that sign(BN(acc)) == +1 iff flip*acc >= T, for integer acc.

    Computed in float64 from the stored statistics. For gamma > 0: BN(acc) >= 0 iff
    acc >= mu - beta*sigma/gamma =: t, i.e. acc >= ceil(t). For gamma < 0 it is acc <= floor(t),
    i.e. -acc >= -floor(t). For gamma == 0 the output is the constant sign(beta).
    """
    gamma = bn.weight.detach().double().cpu().numpy()
    beta = bn.bias.detach().double().cpu().numpy()
    mu = bn.running_mean.detach().double().cpu().numpy()
    sigma = np.sqrt(bn.running_var.detach().double().cpu().numpy() + bn.eps)
    flip = np.where(gamma < 0, -1, 1).astype(np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mu - beta * sigma / gamma
    thr = np.where(gamma > 0, np.ceil(t), -np.floor(t))
    # gamma == 0: always +1 (beta >= 0) or always -1; the clamp below turns these into range ends.
    thr = np.where(gamma == 0, np.where(beta >= 0, -np.inf, np.inf), thr)
    thr = np.clip(thr, -bound, bound + 1)
    return flip, thr.astype(np.int64)


def fold_layer(name, block: nn.Sequential, first: bool) -> IntLayer:
    mods = list(block)
    pad = 0
    pad_value = 0.0
    if isinstance(mods[0], nn.ConstantPad2d):
        pad, pad_value = mods[0].padding[0], float(mods[0].value)
        mods = mods[1:]
    layer, bn = mods[0], mods[1]
    if not isinstance(layer, (QuantConv2d, QuantLinear)) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise BnnError("layer %s is not a binary layer with BatchNorm: only binary networks fold to integers" % name)
    pool = None
    if isinstance(mods[-1], nn.MaxPool2d):
        k, s = mods[-1].kernel_size, mods[-1].stride
        pool = (k if isinstance(k, int) else k[0], s if isinstance(s, int) else s[0])
    w = sign_weights(layer.weight)
    input_max = 255 if first else 1
    kind = "conv" if isinstance(layer, QuantConv2d) else "fc"
    if kind == "conv":
        if not pad:
            pad = layer.padding[0]
        stride = layer.stride[0]
    else:
        stride = 1
    il = IntLayer(name, kind, w, np.zeros(w.shape[0], np.int64), input_max, stride, pad, pad_value, pool)
    flip, thr = fold_threshold(bn, il.acc_bound)
    il.weight = (w * flip.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int8)
    il.threshold = thr
    return il


def fold_backbone(model: AlexNet, cut: Optional[str] = None) -> List[IntLayer]:
    cut = cut or model.cfg.cut
    names = list(model.blocks)
    if cut not in names:
        raise BnnError("cut point %r does not exist (layers: %s)" % (cut, ", ".join(names)))
    if model.cfg.precision != "binary":
        raise BnnError("only binary networks have an integer backbone (this one is %s)" % model.cfg.precision)
    return [fold_layer(n, model.blocks[n], i == 0) for i, n in enumerate(names[: names.index(cut)])]


class IntegerBackbone(nn.Module):
    """Evaluates the integer definition: uint8 NCHW (as float) in, +-1 features (N, D) out."""

    def __init__(self, layers: List[IntLayer]):
        super().__init__()
        self.layers = layers
        for i, il in enumerate(layers):
            self.register_buffer("w%d" % i, torch.from_numpy(il.weight.astype(np.float32)))
            self.register_buffer("t%d" % i, torch.from_numpy(il.threshold.astype(np.float32)))

    @property
    def feature_width(self):
        return self.layers[-1].weight.shape[0]

    @torch.no_grad()
    def forward(self, x, return_all=False):
        outs = []
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for i, il in enumerate(self.layers):
                w, t = getattr(self, "w%d" % i), getattr(self, "t%d" % i)
                if il.kind == "conv":
                    if il.padding:
                        x = F.pad(x, (il.padding,) * 4, value=il.pad_value)
                    acc = F.conv2d(x, w, stride=il.stride)
                    t = t.view(1, -1, 1, 1)
                else:
                    x = torch.flatten(x, 1)
                    acc = x @ w.t()
                # Accumulators are integers; rounding removes any accelerator-library float error.
                x = torch.where(torch.round(acc) >= t, 1.0, -1.0)
                if il.pool is not None:
                    x = F.max_pool2d(x, *il.pool)
                outs.append(x)
        return outs if return_all else torch.flatten(x, 1)
