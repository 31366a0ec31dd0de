import pytest
import torch

from bnn_transfer.host.errors import BnnError
from bnn_transfer.train.models import ModelConfig, binary_act, build_model, count_weights
from bnn_transfer.train.presets import PRESETS, get_preset, presets_table


def test_binary_activation_forward_is_sign_with_zero_to_plus_one():
    act = binary_act()
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 3.0])
    assert act(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_binary_activation_backward_is_clipped_straight_through():
    act = binary_act()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    act(x).sum().backward()
    # Courbariaux: identity gradient inside [-1, 1], zero outside (hard tanh).
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_binary_weights_forward_sign_backward_straight_through():
    model = build_model(ModelConfig(preset="tiny", num_classes=4))
    fc = model.blocks["fc3"][0]
    with torch.no_grad():
        fc.weight.copy_(torch.linspace(-0.9, 0.9, fc.weight.numel()).view_as(fc.weight))
    qw = fc.quant_weight().value
    assert set(qw.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(qw, torch.where(fc.weight >= 0, 1.0, -1.0))
    x = torch.ones(2, fc.in_features)
    fc(x).sum().backward()
    # Straight-through: d out / d latent weight = input (no zeroed entries while |w| <= 1).
    assert torch.all(fc.weight.grad != 0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("precision", ["binary", "fp"])
def test_preset_output_shapes(preset, precision):
    spec = get_preset(preset)
    model = build_model(ModelConfig(preset=preset, num_classes=7, precision=precision, head="float")).eval()
    x = torch.randint(0, 256, (2, 3, spec.input_size, spec.input_size)).float()
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        feats = model(x, stop="fc3")
    assert feats.shape == (2, spec.fcs[-1].out_features)
    if precision == "binary":
        assert set(feats.unique().tolist()) <= {-1.0, 1.0}


def test_paper_preset_has_alexnet_weight_count():
    # AlexNet without grouped convolutions: 62,367,776 conv+FC weights (62.4M); with groups it would be 61.0M.
    model = build_model(ModelConfig(preset="paper", num_classes=1000))
    assert abs(count_weights(model) - 62.4e6) / 62.4e6 < 0.01
    assert count_weights(model) == 62_367_776 == get_preset("paper").weight_count()


@pytest.mark.parametrize("preset", ["z2", "tiny"])
def test_weight_count_from_the_spec_equals_the_model(preset):
    spec = get_preset(preset)
    assert spec.weight_count() == count_weights(build_model(ModelConfig(preset=preset, num_classes=spec.num_classes)))


def test_readme_presets_table_is_generated(golden):
    golden.check("presets.md", presets_table())


def test_z2_preset_is_alexnet_shaped_and_at_least_64px():
    spec = get_preset("z2")
    assert spec.input_size >= 64 and len(spec.convs) == 5 and len(spec.fcs) == 2


def test_bad_cut_and_preset_are_one_line_errors():
    with pytest.raises(BnnError, match="cut point 'conv3'"):
        ModelConfig(preset="tiny", cut="conv3")
    with pytest.raises(BnnError, match="unknown preset 'huge'"):
        get_preset("huge")
