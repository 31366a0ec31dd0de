"""Bit-exactness against the torch integer backbone: the layer-by-layer comparison that every rung of
the ladder uses (the export's QONNX graph here, FINN's graphs and the emulator in build_fpga)."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .qonnx_graph import execute


def compare_layers(reference: Sequence[np.ndarray], got: Sequence[np.ndarray], names: Sequence[str]) -> Dict:
    """Mismatched final feature bits and the first layer whose outputs differ from the reference.

    Both sides hold one array per layer, batch first, in the same layout. A different number of
    layers counts as a mismatch of everything (``mismatched_bits`` -1).
    """
    n = int(reference[-1].shape[0])
    final_ref = np.asarray(reference[-1]).reshape(n, -1)
    if len(got) != len(reference):
        return {"images": n, "mismatched_bits": -1, "bits": int(final_ref.size),
                "first_divergence": "%d layers instead of %d" % (len(got), len(reference))}
    first = next((name for name, r, g in zip(names, reference, got)
                  if r.shape != g.shape or not np.array_equal(r, g)), None)
    final_got = np.asarray(got[-1]).reshape(n, -1)
    bad = int(np.count_nonzero(final_ref != final_got)) if final_ref.shape == final_got.shape else -1
    return {"images": n, "mismatched_bits": bad, "bits": int(final_ref.size), "first_divergence": first}


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
    ref: List[np.ndarray] = [t.numpy() for t in backbone(torch.from_numpy(x), return_all=True)]
    res = compare_layers(ref, execute(model, x, all_layers=True), [layer.name for layer in backbone.layers])
    return Verification(res["images"], res["mismatched_bits"], res["first_divergence"])


def describe_failure(v: Verification):
    return "features differ in %d bits over %d images; first divergent layer: %s" % (
        v.mismatched_bits, v.images, v.first_divergence)
