"""bench/transfer.py: the random-backbone baseline and the per-layer probe, on real digit scans."""

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "brevitas", "sklearn")),
                                reason="needs torch, brevitas and scikit-learn")


def test_random_backbone_probe_reads_every_layer_of_the_tiny_preset():
    from bnn_transfer.bench.transfer import _images, by_layer, random_backbone, torch_layers
    from bnn_transfer.host.datasets import open_dataset
    from bnn_transfer.host.preprocess import Preprocess

    pp = Preprocess.for_input_size(32)
    tr, te = open_dataset("digits", "train"), open_dataset("digits", "test")
    keep_tr, keep_te = np.arange(0, len(tr), 4), np.arange(0, len(te), 4)  # 300 + 150 images: seconds
    img_tr = _images(tr, pp, keep_tr)
    img_te = _images(te, pp, keep_te)
    backbone = random_backbone("tiny", img_tr)
    names = [layer.name for layer in backbone.layers]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2"]
    res = by_layer(torch_layers(backbone), names, img_tr, tr.labels[keep_tr], img_te, te.labels[keep_te],
                   tr.classes)
    assert [res[n]["width"] for n in names] == [32 * 16 * 16, 64 * 7 * 7, 96 * 5 * 5, 96 * 3 * 3, 128, 256, 256]
    # the first binary layer keeps the digits readable (chance is 10%); the 128-bit 1 x 1 conv5 loses much of it
    assert res["conv1"]["top1"] > 0.8 and res["conv5"]["top1"] < res["conv1"]["top1"] - 0.1, res
