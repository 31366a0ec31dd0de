"""A binary network with random weights and realistic BatchNorm statistics, for tests and benchmarks.

Random weights alone leave BatchNorm at its initial statistics, which no trained network has; one
forward pass over random images in train mode gives statistics on the accumulators' real scale.
"""

import torch
from torch import nn

from .models import ModelConfig, build_model


def calibrated_random_model(cfg: ModelConfig, seed=0, tie_prone=False, images=8):
    """``cfg``'s network in eval mode, BatchNorm calibrated on ``images`` random uint8 images.

    BatchNorm scales get random signs and magnitudes in [0.5, 1.5): a negative scale exercises the
    weight flip of the integer folding, and near-zero scales would put thresholds outside the
    accumulator range (FINN's step_minimize_bit_width asserts on those).
    ``tie_prone``: means rounded to reachable integer accumulators and shifts zeroed, so BatchNorm
    outputs exactly 0 for many inputs, where the sign depends on floating-point evaluation order.
    """
    torch.manual_seed(seed)
    model = build_model(cfg)
    size = cfg.spec().input_size
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (images, 3, size, size)).float())
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.randn_like(m.weight).sign() * (0.5 + torch.rand_like(m.weight)))
                if tie_prone:
                    m.running_mean.copy_(torch.round(m.running_mean))
                    m.bias.zero_()
    return model
