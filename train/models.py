"""The binary AlexNet family in Brevitas, and its floating-point twin for the baselines.

Binary layers follow Courbariaux et al. as in ``brevitas_examples.bnn_pynq``: +-1 weights and
activations (sign forward, clipped straight-through estimator backward), a BatchNorm after every
conv and FC layer, max pooling after the activation. The network's input is the raw uint8 image
as a float tensor (values 0..255, NCHW): no normalisation layer, because the BatchNorm after the
first conv absorbs mean and scale, so the accelerator can take camera bytes directly.
"""

from dataclasses import asdict, dataclass

import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
from torch import nn

from bnn_transfer.host.errors import BnnError

from .presets import Preset, get_preset

PRECISIONS = ("binary", "fp")
HEADS = ("binary", "float")
BN_EPS = 1e-4


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"
    num_classes: int = 24
    precision: str = "binary"  # "binary" (BNN) or "fp" (the paper's floating-point baseline)
    head: str = "binary"  # the last layer: "binary" (paper variant a) or "float" (variant b)
    cut: str = "fc3"  # the first layer trained in software; everything before it is frozen

    def __post_init__(self):
        for name, kind in (("preset", str), ("precision", str), ("head", str), ("cut", str)):
            if not isinstance(getattr(self, name), kind):
                raise BnnError("model config: %s must be a string, got %r" % (name, getattr(self, name)))
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise BnnError("model config: num_classes must be a positive integer, got %r" % (self.num_classes,))
        if self.precision not in PRECISIONS:
            raise BnnError("precision must be one of %s, not %r" % (PRECISIONS, self.precision))
        if self.head not in HEADS:
            raise BnnError("head must be one of %s, not %r" % (HEADS, self.head))
        names = self.spec().layer_names
        if self.cut not in names[names.index("fc1"):]:
            raise BnnError(
                "cut point %r does not exist: the software part starts at one of fc1, fc2, fc3" % self.cut
            )

    def spec(self) -> Preset:
        return get_preset(self.preset, self.num_classes)

    def to_dict(self):
        return asdict(self)

    @staticmethod
    def from_dict(d, where=None):
        """``where`` (a file name) prefixes the error message."""
        prefix = "" if where is None else "%s: " % where
        try:
            return ModelConfig(**{k: d[k] for k in ("preset", "num_classes", "precision", "head", "cut")})
        except KeyError as e:
            raise BnnError("%smodel config lacks %s" % (prefix, e)) from None
        except BnnError as e:
            raise BnnError(prefix + str(e)) from None


def binary_act():
    return QuantIdentity(act_quant=CommonActQuant, bit_width=1)


def conv_block(spec, in_channels, first, precision):
    layers = []
    if precision == "binary":
        pad = spec.padding
        if pad and not first:
            # Binary feature maps pad with -1 (the 0 bit): see presets.py.
            layers.append(nn.ConstantPad2d(pad, -1.0))
            pad = 0
        layers.append(
            QuantConv2d(
                in_channels, spec.out_channels, spec.kernel, stride=spec.stride, padding=pad, bias=False,
                weight_quant=CommonWeightQuant, weight_bit_width=1,
            )
        )
        layers += [nn.BatchNorm2d(spec.out_channels, eps=BN_EPS), binary_act()]
    else:
        layers += [
            nn.Conv2d(in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, bias=False),
            nn.BatchNorm2d(spec.out_channels, eps=BN_EPS),
            nn.ReLU(inplace=True),
        ]
    if spec.pool is not None:
        layers.append(nn.MaxPool2d(*spec.pool))
    return nn.Sequential(*layers)


def fc_block(in_features, out_features, precision):
    if precision == "binary":
        return nn.Sequential(
            QuantLinear(in_features, out_features, bias=False, weight_quant=CommonWeightQuant, weight_bit_width=1),
            nn.BatchNorm1d(out_features, eps=BN_EPS),
            binary_act(),
        )
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False),
        nn.BatchNorm1d(out_features, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )


def classifier(in_features, num_classes, head, precision):
    """fc3. Binary: +-1 weights then a per-class BatchNorm as the learned scale (folded on export)."""
    if precision == "binary" and head == "binary":
        return nn.Sequential(
            QuantLinear(in_features, num_classes, bias=False, weight_quant=CommonWeightQuant, weight_bit_width=1),
            nn.BatchNorm1d(num_classes, eps=BN_EPS),
        )
    return nn.Sequential(nn.Linear(in_features, num_classes, bias=True))


class AlexNet(nn.Module):
    """conv1..conv5, fc1, fc2 as ``self.blocks`` (an ordered ModuleDict), fc3 as ``self.blocks['fc3']``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        spec = cfg.spec()
        blocks = {}
        ch = 3
        for i, c in enumerate(spec.convs):
            blocks[c.name] = conv_block(c, ch, i == 0, cfg.precision)
            ch = c.out_channels
        _, width = spec.geometry()
        for f in spec.fcs:
            blocks[f.name] = fc_block(width, f.out_features, cfg.precision)
            width = f.out_features
        blocks["fc3"] = classifier(width, cfg.num_classes, cfg.head, cfg.precision)
        self.blocks = nn.ModuleDict(blocks)
        self.feature_width = width
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                # Latent weights live in [-1, 1] (clipped after every step): uniform is the BNN custom.
                nn.init.uniform_(m.weight, -1.0, 1.0)

    def forward(self, x, start=None, stop=None):
        """Run the blocks in [start, stop) (names; default: all). Flattens before the first FC."""
        names = list(self.blocks)
        lo = names.index(start) if start else 0
        hi = names.index(stop) if stop else len(names)
        for name in names[lo:hi]:
            if name.startswith("fc") and x.dim() > 2:
                x = torch.flatten(x, 1)
            x = self.blocks[name](x)
        return x

    def clip_weights(self):
        """Courbariaux: keep latent binary weights in [-1, 1] so the STE gradient stays alive."""
        for m in self.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.weight.data.clamp_(-1.0, 1.0)

    def frozen_names(self):
        names = list(self.blocks)
        return names[: names.index(self.cfg.cut)]

    def software_names(self):
        names = list(self.blocks)
        return names[names.index(self.cfg.cut):]


def build_model(cfg: ModelConfig) -> AlexNet:
    return AlexNet(cfg)


def count_weights(model: nn.Module) -> int:
    """Weights of conv and linear layers only (no biases, no BatchNorm), as AlexNet counts are quoted."""
    return sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
