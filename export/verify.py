"""Bit-exactness of the exported graph against the torch integer backbone."""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from host.errors import BnnError

from .qonnx_graph import execute


@dataclass
class Verification:
    images: int
    mismatched_bits: int
    first_divergence: Optional[str] = None  # name of the first layer whose outputs differ

    def to_dict(self):
        d = {"images": self.images, "mismatched_bits": self.mismatched_bits}
        if self.first_divergence:
            d["first_divergence"] = self.first_divergence
        return d


def verify_backbone(backbone, model, images_nhwc: np.ndarray) -> Verification:
    """Run uint8 NHWC images through both; compare every layer, report the first that differs."""
    x = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).astype(np.float32)
    ref = [t.numpy() for t in backbone(torch.from_numpy(x), return_all=True)]
    got = execute(model, x, all_layers=True)
    if len(ref) != len(got):
        raise BnnError("exported graph has %d binary layers, the backbone %d" % (len(got), len(ref)))
    first = None
    for layer, r, g in zip(backbone.layers, ref, got):
        if r.shape != g.shape or not np.array_equal(r, g):
            first = layer.name
            break
    final_ref = ref[-1].reshape(len(x), -1)
    final_got = got[-1].reshape(len(x), -1)
    mismatched = int(np.count_nonzero(final_ref != final_got)) if final_ref.shape == final_got.shape else -1
    return Verification(len(x), mismatched, first)


def describe_failure(v: Verification):
    return "features differ in %d bits over %d images; first divergent layer: %s" % (
        v.mismatched_bits, v.images, v.first_divergence)
