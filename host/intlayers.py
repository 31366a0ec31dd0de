"""The frozen backbone's data: one ``IntLayer`` per binary layer, and the digest that names it.

Every stage shares this numpy-only definition: train/ folds a trained network into these layers,
export/ turns them into QONNX, build_fpga/ checks FINN's graph against them and host/ heads record
their ``backbone_digest`` so that they only run on features they were trained on. It lives at the
bottom layer so that none of those needs torch to read it.
"""

import hashlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["IntLayer", "backbone_digest"]


@dataclass
class IntLayer:
    """``out = +1 iff acc >= threshold`` per output channel, ``acc = sum(weight * x)`` (integers)."""

    name: str
    kind: str  # "conv" or "fc"
    weight: np.ndarray  # int8, +-1: (out, in, k, k) or (out, in)
    threshold: np.ndarray  # int64, (out,)
    input_max: int  # 255 for the uint8 image, 1 for +-1 maps
    stride: int = 1
    padding: int = 0
    pad_value: float = 0.0  # 0 for pixels, -1 for binary maps (the 0 bit)
    pool: Optional[Tuple[int, int]] = None

    @property
    def acc_bound(self) -> int:
        """|acc| can never exceed fan_in * max|x|."""
        return int(np.prod(self.weight.shape[1:])) * self.input_max


def backbone_digest(layers: List[IntLayer]) -> str:
    """sha256 identifying the integer backbone; heads record it so they only run on features they fit."""
    h = hashlib.sha256()
    for il in layers:
        geometry = (il.name, il.kind, il.weight.shape, il.stride, il.padding, il.pad_value, il.pool, il.input_max)
        h.update(repr(geometry).encode())
        h.update(np.ascontiguousarray(il.weight, dtype=np.int8).tobytes())
        h.update(np.ascontiguousarray(il.threshold, dtype=np.int64).tobytes())
    return h.hexdigest()
