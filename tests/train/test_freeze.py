import numpy as np
import pytest
import torch
from torch import nn

from bnn_transfer.export.qonnx_graph import to_brevitas
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.intlayers import backbone_digest
from bnn_transfer.train.calibrate import calibrated_random_model
from bnn_transfer.train.freeze import IntegerBackbone, fold_backbone, fold_threshold
from bnn_transfer.train.models import ModelConfig, build_model


def _bn(gamma, beta, mean, var):
    bn = nn.BatchNorm1d(len(gamma), eps=1e-4).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    return bn


def test_fold_threshold_matches_batchnorm_sign_on_every_integer():
    bound = 40
    bn = _bn([1.5, -0.7, 0.0, 0.0, 2.0, -3.0], [0.3, -1.1, 0.5, -0.5, 0.0, 0.0],
             [3.2, -7.5, 1.0, 1.0, 5.0, -6.0], [2.0, 0.5, 1.0, 1.0, 1.0, 4.0])
    flip, thr = fold_threshold(bn, bound)
    acc = np.arange(-bound, bound + 1, dtype=np.float64)[:, None]
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    mu, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    ref = np.where((acc - mu) / np.sqrt(var + 1e-4) * gamma + beta >= 0, 1, -1)
    got = np.where(flip * acc >= thr, 1, -1)
    assert np.array_equal(ref, got)
    assert np.all(thr >= -bound) and np.all(thr <= bound + 1)


def _calibrated(preset, seed, tie_prone=False):
    model = calibrated_random_model(ModelConfig(preset=preset, num_classes=5), seed, tie_prone)
    size = model.cfg.spec().input_size
    return model, torch.randint(0, 256, (8, 3, size, size)).float()


@pytest.mark.parametrize("preset", ["tiny", "z2"])
def test_integer_backbone_equals_float_model_and_brevitas_twin(preset):
    model, x = _calibrated(preset, 1)
    layers = fold_backbone(model)
    ib = IntegerBackbone(layers)
    feats = ib(x)
    assert feats.shape == (8, model.feature_width)
    assert torch.equal(feats, model(x, stop="fc3"))
    assert torch.equal(feats, to_brevitas(layers)(x))


def test_tie_prone_network_agrees_with_brevitas_twin():
    model, x = _calibrated("tiny", 2, tie_prone=True)
    layers = fold_backbone(model)
    ib = IntegerBackbone(layers)
    acc = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1,) * 4), ib.w0)
    thr = ib.t0.view(1, -1, 1, 1)
    assert int((acc == thr).sum()) > 0, "the fixture must actually hit ties"
    assert torch.equal(ib(x), to_brevitas(layers)(x))


def test_digest_changes_with_any_threshold():
    model, _ = _calibrated("tiny", 3)
    layers = fold_backbone(model)
    d = backbone_digest(layers)
    layers[2].threshold[0] += 1
    assert backbone_digest(layers) != d


def test_fp_network_has_no_integer_backbone():
    with pytest.raises(BnnError, match="only binary networks"):
        fold_backbone(build_model(ModelConfig(preset="tiny", precision="fp", head="float")))
