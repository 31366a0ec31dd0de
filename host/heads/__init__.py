"""The software last layer: applied to the accelerator's binary features, trained on the board.

The backbone on the FPGA turns an image into D binary features (+1/-1); the head maps them to
C class scores. Three variants:

- ``float``  (paper variant b): softmax regression, ``logits = x @ W + b``.
- ``binary`` (paper variant a): binary weights with BatchNorm folded into a per-class affine,
  ``logits = (x @ Wb) * scale + bias``, Wb in {-1, +1}.
- ``mlp``    (the paper's future work): ``logits = relu(x @ W1 + b1) @ W2 + b2``.

Modules: ``head`` (the Head and inference), ``headfile`` (the file below), ``fit`` (training:
``fit_head`` chooses the L2 on a held-out split), ``lbfgs`` (full-batch solver and L2 path of the
float and mlp heads), ``adam`` (minibatch trainer of the binary head), ``model`` (the training
parametrisation). Features may be given packed (uint8 bits from ``host.features.pack_features``):
training unpacks one block of rows at a time, so 6,149 x 4,096 features hold 3 MB of bits, never
the 100 MB float matrix.

Head file (``.npz``, read with ``allow_pickle=False``; ``python -m export head`` writes the
same through ``save_head``)::

    format         str    "bnn-transfer/head"
    version        int64  1
    variant        str    "float" | "binary" | "mlp"
    classes        str    (C,)  class names, unique, non-empty
    feature_width  int64  D
    meta           str    JSON object (preprocessing, backbone sha256, training summary with the
                          chosen L2 and how it was chosen, ...)
    float:   W float32 (D, C), b float32 (C,)
    binary:  W int8 (D, C) of -1/+1, scale float32 (C,), bias float32 (C,)
    mlp:     W1 float32 (D, H), b1 float32 (H,), W2 float32 (H, C), b2 float32 (C,)
"""

from .fit import HeadConfig, fit_head, head_config
from .head import VARIANTS, Head, evaluate, predict_topk
from .headfile import HEAD_FORMAT, HEAD_VERSION, load_head, save_head

__all__ = ["Head", "HeadConfig", "fit_head", "head_config", "evaluate", "predict_topk", "save_head", "load_head",
           "HEAD_FORMAT", "HEAD_VERSION", "VARIANTS"]
