"""The bit-exactness ladder on real exports (random calibrated weights, tie-prone BatchNorm):

torch integer backbone -> QONNX (execute_onnx) -> FINN streamlined graph -> FINN HW-layer graph
(despecialized, python execution) -> host emulator from the bundle's emulator.npz.

Every stage must give the torch backbone's outputs at every layer, on the same uint8 images; when
one does not, the comparison names the first layer where it diverges.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

HAVE_FINN = all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx", "brevitas", "torch"))
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus, qonnx, brevitas and torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_bundle(tmp, preset, fps):
    """Tie-prone calibrated export -> in-process build (FINN dir kept) -> (model, export dir, bundle, FINN dir)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "export"))
    from test_export import calibrated_model, write_run

    from bnn_transfer.build_fpga.build import BuildConfig, build
    from bnn_transfer.export.backbone import ExportConfig, export_backbone
    from bnn_transfer.train.models import ModelConfig

    model = calibrated_model(ModelConfig(preset=preset, num_classes=4), seed=5, tie_prone=True)
    run = write_run(tmp / "run", model, ["a", "b", "c", "d"])
    export = str(tmp / "export")
    export_backbone(ExportConfig(run=run, out=export, verify_images=2), progress=lambda s: None)
    out = tmp / "deploy"
    res = build(BuildConfig(export=export, board="pynq-z2", out=str(out), target_fps=fps, estimate_only=True,
                            build_dir=str(tmp / "finn-build"), verify_images=0), log=lambda s: None)
    assert not res.skipped and res.build_dir == str(tmp / "finn-build")
    return model, export, out, tmp / "finn-build" / "finn"


def count_ties(layers, images_nhwc):
    """How often acc == T exactly, per layer (where a float BatchNorm would sit on zero)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).astype(np.float64))
    ties = []
    for il in layers:
        w = torch.from_numpy(il.weight.astype(np.float64))
        if il.kind == "conv":
            if il.padding:
                x = F.pad(x, (il.padding,) * 4, value=il.pad_value)
            acc = F.conv2d(x, w, stride=il.stride)
            t = torch.from_numpy(il.threshold.astype(np.float64)).view(1, -1, 1, 1)
        else:
            acc = torch.flatten(x, 1) @ w.t()
            t = torch.from_numpy(il.threshold.astype(np.float64)).view(1, -1)
        ties.append(int((acc == t).sum()))
        x = torch.where(acc >= t, 1.0, -1.0).double()
        if il.pool:
            x = F.max_pool2d(x, *il.pool)
    return ties


def ladder(model, export, out, finn_dir, images):
    """Every stage's per-layer outputs, compared with the torch integer backbone of the *model*."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.ladder import emulator_stage, finn_stage, qonnx_stage, torch_stage
    from bnn_transfer.build_fpga.transforms import Despecialize
    from bnn_transfer.export.verify import compare_layers
    from bnn_transfer.host.emulator import load_emulator
    from bnn_transfer.train.freeze import fold_backbone

    layers = fold_backbone(model)
    names = [il.name for il in layers]
    ref = torch_stage(layers, images)
    models = finn_dir / "intermediate_models"
    stages = {
        "qonnx": lambda: qonnx_stage(ModelWrapper(os.path.join(export, "backbone.onnx")), images),
        "finn_streamlined": lambda: finn_stage(ModelWrapper(str(models / "step_streamline.onnx")), images),
        "finn_hw": lambda: finn_stage(
            ModelWrapper(str(models / "step_generate_estimate_reports.onnx")).transform(Despecialize()), images),
        "emulator": lambda: emulator_stage(load_emulator(str(out / "emulator.npz")), images),
    }
    return layers, names, ref, {k: compare_layers(ref, run(), names) for k, run in stages.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder-tiny")
    return build_bundle(tmp, "tiny", 1000)


@pytest.mark.slow
def test_tiny_ladder_is_bit_exact_with_ties(tiny):
    model, export, out, finn_dir = tiny
    images = np.random.default_rng(11).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    layers, names, ref, results = ladder(model, export, out, finn_dir, images)
    ties = count_ties(layers, images)
    assert ties[0] > 0 and sum(ties[1:]) > 100, ties  # the comparisons really sit on thresholds
    assert 0.1 < (ref[-1] > 0).mean() < 0.9  # not a degenerate network
    for stage, res in results.items():
        assert res == {"images": 6, "mismatched_bits": 0, "bits": 6 * 256, "first_divergence": None}, stage


@pytest.mark.slow
def test_a_corrupted_threshold_is_named_by_layer(tiny):
    from bnn_transfer.build_fpga.ladder import divergence_message, emulator_stage, torch_stage
    from bnn_transfer.export.verify import compare_layers
    from bnn_transfer.host.emulator import Emulator
    from bnn_transfer.train.freeze import fold_backbone

    model, _, out, _ = tiny
    with np.load(str(out / "emulator.npz"), allow_pickle=False) as z:
        spec = json.loads(str(z["spec"]))
        weights = [z[ly["name"] + ".weight"] for ly in spec["layers"]]
        thresholds = [z[ly["name"] + ".threshold"].copy() for ly in spec["layers"]]
    images = np.random.default_rng(12).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    layers = fold_backbone(model)
    names = [il.name for il in layers]
    ref = torch_stage(layers, images)
    assert compare_layers(ref, emulator_stage(Emulator(spec, weights, thresholds), images), names)[
        "first_divergence"] is None
    k = names.index("conv3")
    out3 = ref[k].reshape(3, -1, thresholds[k].size)
    channel = int(np.flatnonzero((out3 < 0).any(axis=(0, 1)))[0])
    thresholds[k][channel] = -10 ** 6  # this channel now always fires
    res = compare_layers(ref, emulator_stage(Emulator(spec, weights, thresholds), images), names)
    assert res["first_divergence"] == "conv3"
    msg = divergence_message("emulator", res, "DEPLOY")
    assert msg.startswith("DEPLOY: emulator differs from the torch integer backbone, first at layer conv3 (")


def test_threshold_check_compares_semantics_not_raw_values():
    from bnn_transfer.build_fpga.bundle import check_emulator, effective_thresholds
    from bnn_transfer.host.errors import BnnError
    from bnn_transfer.host.intlayers import IntLayer

    rng = np.random.default_rng(0)
    w1 = rng.choice([-1, 1], size=(4, 27)).astype(np.int8)
    w2 = rng.choice([-1, 1], size=(3, 8)).astype(np.int8)
    layers = [IntLayer("conv1", "fc", w1, np.array([0, 5, -7000, 7000]), 255),
              IntLayer("fc1", "fc", w2, np.array([-8, 3, 9]), 1)]
    spec = {"input": {"shape": [3, 3, 3], "datatype": "UINT8"},
            "layers": [{"name": "conv1", "kind": "fc"}, {"name": "fc1", "kind": "fc"}]}
    torch_side = (spec, [w1, w2], [il.threshold for il in layers])
    # FINN clips to its accumulator range; fan-in 8 makes acc even, so T=3 acts like T=4
    pos1 = 255 * int((w1[3] > 0).sum())
    finn = (spec, [w1, w2], [np.array([0, 5, -8191, pos1 + 1]), np.array([-9, 4, 10])])
    check_emulator(finn, torch_side, layers, "B")
    assert list(effective_thresholds(np.array([-9, 3, 4, 9, 10]), w2, 1)) == [-8, 4, 4, 10, 10]
    finn[2][1][1] = 6  # acc == 4 now gives -1
    with pytest.raises(BnnError, match=r"^B: layer fc1 thresholds in FINN's graph differ from the torch backbone "
                                       r"on reachable accumulators in 1 channel\(s\) \(first: channel 1, FINN 6 vs "
                                       r"torch 3\)$"):
        check_emulator(finn, torch_side, layers, "B")


@pytest.mark.slow
def test_z2_ladder_is_bit_exact(tmp_path):
    model, export, out, finn_dir = build_bundle(tmp_path, "z2", 1000)
    images = np.random.default_rng(13).integers(0, 256, size=(2, 112, 112, 3), dtype=np.uint8)
    _, _, ref, results = ladder(model, export, out, finn_dir, images)
    assert 0.1 < (ref[-1] > 0).mean() < 0.9
    for stage, res in results.items():
        assert res == {"images": 2, "mismatched_bits": 0, "bits": 2 * 512, "first_divergence": None}, stage
