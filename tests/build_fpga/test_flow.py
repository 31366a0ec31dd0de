"""The FINN estimate flow on stand-in backbones built to the export contract (issue #4).

The stand-in: brevitas QuantConv2d/QuantLinear with binary weights (CommonWeightQuant, 1 bit) and
bias = -threshold, QuantIdentity(CommonActQuant, 1 bit), MaxPool2d, torch flatten; exported with
``export_qonnx``; the input tensor annotated UINT8. Thresholds are integers; with ``ties=True`` each
channel's threshold is the (lower) median of its accumulator over the calibration images, so
``acc == threshold`` happens at least once per channel and often in the binary layers.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

HAVE_FINN = all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx", "brevitas", "torch"))
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus, qonnx, brevitas and torch")

# (out_ch, kernel, stride, pad, pool) per conv; FC widths. Same geometry as train/presets.py.
STANDIN_PRESETS = {
    "tiny": dict(input=32, convs=[(32, 3, 1, 1, (2, 2)), (64, 3, 1, 0, (2, 2)), (96, 3, 1, 0, None),
                                  (96, 3, 1, 0, None), (128, 3, 1, 0, None)], fcs=[256, 256]),
    "z2": dict(input=112, convs=[(64, 3, 2, 0, (2, 2)), (128, 3, 1, 0, (2, 2)), (192, 3, 1, 0, None),
                                 (192, 3, 1, 0, None), (128, 3, 1, 0, (2, 2))], fcs=[512, 512]),
    # binary maps padded with -1 (the 0 bit), as the paper preset needs; small enough for a test
    "padded": dict(input=16, convs=[(16, 3, 1, 1, (2, 2)), (32, 3, 1, 1, (2, 2)), (32, 3, 1, 1, None)],
                   fcs=[64, 64]),
}
LAYER_NAMES = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2"]


def _layer_forward(layer, x, t=None):
    """Integer definition of one block on float64 torch tensors: acc -> (acc >= T ? +1 : -1) -> pool."""
    import torch
    import torch.nn.functional as F

    w = torch.from_numpy(layer["weight"].astype(np.float64))
    if layer["kind"] == "conv":
        if layer["pad"]:
            x = F.pad(x, (layer["pad"],) * 4, value=float(layer["pad_value"]))
        acc = F.conv2d(x, w, stride=layer["stride"])
        tt = None if t is None else torch.from_numpy(t.astype(np.float64)).view(1, -1, 1, 1)
    else:
        x = torch.flatten(x, 1)
        acc = x @ w.t()
        tt = None if t is None else torch.from_numpy(t.astype(np.float64)).view(1, -1)
    if t is None:
        return acc, None
    y = torch.where(acc >= tt, 1.0, -1.0).double()
    if layer.get("pool"):
        y = F.max_pool2d(y, *layer["pool"])
    return acc, y


def standin_layers(preset, seed=0, calib=None):
    """Random +-1 weights and integer thresholds. With ``calib`` (uint8 NCHW), thresholds are per-channel
    lower medians of the accumulator over calib (tie-prone); else uniform in +-2 std of the accumulator."""
    import torch

    p = STANDIN_PRESETS[preset]
    g = np.random.default_rng(seed)
    layers, cin, x = [], 3, None if calib is None else torch.from_numpy(np.asarray(calib, np.float64))
    for i, (co, k, s, pad, pool) in enumerate(p["convs"]):
        layers.append(dict(kind="conv", weight=g.choice([-1, 1], size=(co, cin, k, k)).astype(np.int8),
                           stride=s, pad=pad, pad_value=0 if i == 0 else -1, pool=pool,
                           input_max=255 if i == 0 else 1))
        cin = co
    fin = cin * _final_hw(p) ** 2
    for fo in p["fcs"]:
        layers.append(dict(kind="fc", weight=g.choice([-1, 1], size=(fo, fin)).astype(np.int8),
                           stride=1, pad=0, pool=None, input_max=1))
        fin = fo
    for layer in layers:
        fan = int(np.prod(layer["weight"].shape[1:]))
        if x is None:
            std = np.sqrt(fan) * (110.0 if layer["input_max"] == 255 else 1.0)
            layer["threshold"] = g.integers(-2 * std, 2 * std + 1, size=layer["weight"].shape[0]).astype(np.int64)
        else:
            acc, _ = _layer_forward(layer, x)
            a = acc.numpy()
            a = a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1) if a.ndim == 4 else a.T
            layer["threshold"] = np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2].astype(np.int64)
            _, x = _layer_forward(layer, x, layer["threshold"])
    return layers


def _final_hw(p):
    size = p["input"]
    for (_, k, s, pad, pool) in p["convs"]:
        size = (size + 2 * pad - k) // s + 1
        if pool:
            size = (size - pool[0]) // pool[1] + 1
    return size


def reference_features(layers, images):
    """The integer definition in float64 torch: uint8 NCHW -> +-1 features; also counts exact ties."""
    import torch

    x = torch.from_numpy(np.asarray(images, np.float64))
    ties = 0
    for layer in layers:
        acc, x = _layer_forward(layer, x, layer["threshold"])
        t = layer["threshold"].reshape((1, -1) + (1,) * (acc.dim() - 2))
        ties += int((acc.numpy() == t).sum())
    return x.numpy().astype(np.float32), ties


def export_standin(layers, input_size, path):
    """Brevitas modules per the export contract -> QONNX at ``path``, input annotated UINT8."""
    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from torch import nn

    blocks, prev = [], None
    for layer in layers:
        w = torch.from_numpy(layer["weight"].astype(np.float32))
        pre = []
        if layer["kind"] == "conv":
            co, ci, k, _ = layer["weight"].shape
            pad = layer["pad"]
            if pad and layer["pad_value"] != 0:
                pre, pad = [nn.ConstantPad2d(pad, float(layer["pad_value"]))], 0
            mod = QuantConv2d(ci, co, k, stride=layer["stride"], padding=pad, bias=True,
                              weight_quant=CommonWeightQuant, weight_bit_width=1)
        else:
            co, ci = layer["weight"].shape
            mod = QuantLinear(ci, co, bias=True, weight_quant=CommonWeightQuant, weight_bit_width=1)
        with torch.no_grad():
            mod.weight.copy_(w)
            mod.bias.copy_(-torch.from_numpy(layer["threshold"].astype(np.float32)))
        mods = ([nn.Flatten(1)] if layer["kind"] == "fc" and prev == "conv" else []) + pre + [
            mod, QuantIdentity(act_quant=CommonActQuant, bit_width=1)]
        if layer.get("pool"):
            mods.append(nn.MaxPool2d(*layer["pool"]))
        blocks.append(nn.Sequential(*mods))
        prev = layer["kind"]
    net = nn.Sequential(*blocks).eval()
    export_qonnx(net, torch.zeros(1, 3, input_size, input_size), export_path=str(path))
    m = ModelWrapper(str(path))
    m.set_tensor_datatype(m.graph.input[0].name, DataType["UINT8"])
    m.save(str(path))
    return path


def make_standin(preset, tmp_path, n_images=6, seed=0, ties=True):
    """(onnx path, uint8 NCHW images as float32, reference features, exact ties seen)."""
    size = STANDIN_PRESETS[preset]["input"]
    g = np.random.default_rng(seed + 1)
    images = g.integers(0, 256, size=(n_images, 3, size, size)).astype(np.float32)
    layers = standin_layers(preset, seed, calib=images if ties else None)
    feats, n_ties = reference_features(layers, images)
    path = export_standin(layers, size, tmp_path / ("%s.onnx" % preset))
    return path, images, feats, n_ties


# ---------------------------------------------------------------- tests


def fake_estimate(board, **used):
    """An Estimate against ``board``'s resources: ``used`` per resource (0 where not given; FF not estimated)."""
    from bnn_transfer.build_fpga.boards import RESOURCES
    from bnn_transfer.build_fpga.estimate import Estimate, Resource

    res = {r: Resource(used=None if r == "ff" else used.get(r, 0), available=board.totals[r], usable=board.usable[r],
                       margin=board.margins[r]) for r in RESOURCES}
    return Estimate(board=board.name, finn_board=board.finn_board, part=board.part, clock_mhz=100.0, fps=1000.0,
                    latency_cycles=0, max_cycles=0, bottleneck="", latency_ms=0.0, layers=[], interconnect=[],
                    weight_bits=0, excludes="", **res)


def test_fit_check_messages():
    from bnn_transfer.build_fpga.boards import get_board

    b = get_board("pynq-z2")
    assert fake_estimate(b).check_fit() == [] and fake_estimate(b).fit_refusal("deploy", "fps") is None
    est = fake_estimate(b, lut=40000, bram18=200)
    assert est.check_fit() == ["LUT 40,000 > 37,240 usable (70% of 53,200)"]
    assert est.check_fit(margins=False) == [] and est.fit_refusal("deploy", "fps") is None
    est = fake_estimate(b, lut=40000, bram18=281)
    assert est.check_fit(margins=False) == ["BRAM18 281 > 280 available"]
    assert est.fit_refusal("deploy", "fps") == (
        "deploy: the design does not fit the pynq-z2 at 1000 img/s: BRAM18 needs 281 of 280 (100%); use a lower "
        "--target-fps or a smaller preset")


def test_boards_come_from_finn():
    from finn.util.basic import pynq_part_map
    from finn.util.platforms import DEFAULT_RES_LIMITS

    from bnn_transfer.build_fpga.boards import board_names, get_board

    assert board_names() == ("pynq-z1", "pynq-z2", "ultra96", "zcu104", "kv260")
    z2 = get_board("pynq-z2")
    assert (z2.part, z2.lut, z2.ff, z2.bram18, z2.dsp, z2.uram) == ("xc7z020clg400-1", 53200, 106400, 280, 220, 0)
    assert z2.usable["lut"] == 37240 and z2.usable["bram18"] == 224
    assert [z2.margins[r] for r in ("lut", "ff", "bram18", "uram", "dsp")] == list(DEFAULT_RES_LIMITS)
    for n in board_names():
        b = get_board(n)
        assert b.part == pynq_part_map[b.finn_board] and b.shell_flow == "vivado_zynq"
        # finn-examples' precedent: 5.0-5.4 ns builds on the UltraScale+ boards; 10 ns on the Zynq-7000 ones
        assert b.clock_mhz == (150.0 if b.part.startswith(("xczu", "xck26")) else 100.0)
    assert get_board("kv260").bram18 == 288 and "DS987" in get_board("kv260").source


@pytest.mark.parametrize("mhz", [float("inf"), float("nan"), 0.0, -5.0, 5.0, 251.0, 1e6])
def test_clock_outside_what_the_pl_clock_can_be_is_one_line(tmp_path, mhz):
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.host.errors import BnnError

    cfg = BuildConfig(export=str(tmp_path), out=str(tmp_path / "out"), clock_mhz=mhz)
    with pytest.raises(BnnError, match=r"^--clock-mhz .*: must be a frequency from 10 to 250 MHz"):
        cfg.check()
    BuildConfig(export=str(tmp_path), out=str(tmp_path / "out"), clock_mhz=250.0).check()


def test_unknown_board_is_a_one_line_error():
    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.host.errors import BnnError

    with pytest.raises(BnnError, match="unknown board 'pynq-z3'"):
        get_board("pynq-z3")


@pytest.mark.slow
def test_tiny_estimates_and_bitexact_ladder(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import run_flow
    from bnn_transfer.build_fpga.ladder import execute_batch
    from bnn_transfer.build_fpga.transforms import Despecialize

    path, images, feats, n_ties = make_standin("tiny", tmp_path, n_images=6)
    assert n_ties > 100  # the tie-prone thresholds really produce acc == T
    qonnx_feats = execute_batch(ModelWrapper(str(path)), images)
    assert np.array_equal(qonnx_feats, feats)
    assert 0.2 < (feats > 0).mean() < 0.8  # not a degenerate network

    out = tmp_path / "build"
    est = run_flow(path, out, BuildConfig(board="pynq-z2", target_fps=1000), LAYER_NAMES)
    assert est.board == "pynq-z2" and est.part == "xc7z020clg400-1" and est.clock_mhz == 100.0
    assert 1000 <= est.fps < 5000
    assert est.latency_cycles > est.max_cycles > 0
    assert 2000 < est.lut.used < 37240 and 0 < est.bram18.used <= 224
    assert est.ff.used is None and est.ff.available == 106400
    assert est.check_fit() == []
    mvaus = [ly for ly in est.layers if ly.op_type.startswith("MVAU")]
    assert [ly.layer for ly in mvaus] == LAYER_NAMES
    assert [ly.layer for ly in est.layers if ly.op_type.startswith("Pool")] == ["conv1", "conv2"]
    assert est.layers[0].op_type == "FMPadding_rtl" and est.layers[0].layer == "conv1"
    assert max(ly.cycles for ly in est.layers) == est.max_cycles
    assert sum(ly.lut for ly in est.layers) == est.lut.layers < est.lut.used

    models = out / "intermediate_models"
    assert np.array_equal(execute_batch(ModelWrapper(str(models / "step_streamline.onnx")), images), feats)
    hw = ModelWrapper(str(models / "step_generate_estimate_reports.onnx")).transform(Despecialize())
    assert np.array_equal(execute_batch(hw, images), feats)
    io = json.loads((out / "report" / "io_shapes.json").read_text())
    assert io["ishape_normal"] == [[1, 32, 32, 3]] and io["idt"] == ["DataType['UINT8']"]
    assert io["oshape_normal"] == [[1, 256]] and io["odt"] == ["DataType['BIPOLAR']"]
    # FINN pads every stream beat (PE output bits) to whole bytes: PE=1 means one byte per feature
    pe = io["oshape_folded"][0][-1]
    assert io["oshape_folded"] == [[1, 256 // pe, pe]] and io["oshape_packed"] == [[1, 256 // pe, -(-pe // 8)]]
    assert io["ishape_folded"][0][:4] == [1, 32, 32, 3 // io["ishape_folded"][0][-1]]

    # every intermediate model FINN saved before specialization executes in python and agrees
    for name in ("step_qonnx_to_finn", "step_tidy_up", "step_convert_to_hw"):
        got = execute_batch(ModelWrapper(str(models / ("%s.onnx" % name))), images[:2])
        assert np.array_equal(got, feats[:2]), name


@pytest.mark.slow
def test_tiny_random_thresholds_bitexact(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import run_flow
    from bnn_transfer.build_fpga.ladder import execute_batch
    from bnn_transfer.build_fpga.transforms import Despecialize

    path, images, feats, _ = make_standin("tiny", tmp_path, n_images=4, seed=3, ties=False)
    assert np.array_equal(execute_batch(ModelWrapper(str(path)), images), feats)
    out = tmp_path / "build"
    est = run_flow(path, out, BuildConfig(board="pynq-z1", target_fps=200, hw_codegen=True),
                   build_dir=tmp_path / "finn_build")
    hw = ModelWrapper(str(out / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    hw = hw.transform(Despecialize())
    assert np.array_equal(execute_batch(hw, images), feats)
    assert est.board == "pynq-z1" and est.fps >= 200
    # step_hw_codegen ran offline: HLS C++ for HLS layers, filled RTL templates for RTL layers
    assert list((tmp_path / "finn_build").glob("finn_tmp/code_gen_ipgen_MVAU_hls_0_*/top_MVAU_hls_0.cpp"))
    assert list((tmp_path / "finn_build").glob("finn_tmp/code_gen_ipgen_ConvolutionInputGenerator_rtl_0_*/*.sv"))
    assert (out / "intermediate_models" / "step_hw_codegen.onnx").exists()


@pytest.mark.slow
def test_folding_file_round_trips(tmp_path):
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import refold, run_flow

    path, _, _, _ = make_standin("tiny", tmp_path, n_images=2, ties=False)
    out = tmp_path / "build"
    est = run_flow(path, out, BuildConfig(board="pynq-z2", target_fps=3000))
    folding = tmp_path / "folding.json"
    folding.write_text((out / "report" / "auto_folding_config.json").read_text())
    again = refold(out, BuildConfig(board="pynq-z2", folding=str(folding)))
    assert json.loads((out / "report" / "applied_folding_config.json").read_text()) == json.loads(folding.read_text())
    assert (again.fps, again.latency_cycles) == (est.fps, est.latency_cycles)
    assert again.lut == est.lut and again.bram18 == est.bram18
    slower = refold(out, BuildConfig(board="pynq-z2", target_fps=300))
    assert slower.fps < est.fps and slower.lut.used < est.lut.used


@pytest.mark.slow
def test_z2_fits_pynq_z2_bitexact(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import run_flow
    from bnn_transfer.build_fpga.ladder import execute_batch
    from bnn_transfer.build_fpga.transforms import Despecialize

    path, images, feats, n_ties = make_standin("z2", tmp_path, n_images=2)
    assert n_ties > 0
    assert np.array_equal(execute_batch(ModelWrapper(str(path)), images), feats)
    est = run_flow(path, tmp_path / "build", BuildConfig(board="pynq-z2", target_fps=1000))
    assert est.fps >= 1000 and est.check_fit() == []
    hw = ModelWrapper(str(tmp_path / "build" / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    assert np.array_equal(execute_batch(hw.transform(Despecialize()), images), feats)


@pytest.mark.slow
def test_binary_padding_with_minus_one_is_bitexact(tmp_path):
    """ConstantPad2d(-1) before a binary conv: QONNX, FINN's streamlined and HW graphs all agree."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import run_flow
    from bnn_transfer.build_fpga.ladder import execute_batch
    from bnn_transfer.build_fpga.transforms import Despecialize

    path, images, feats, _ = make_standin("padded", tmp_path, n_images=6)
    assert np.array_equal(execute_batch(ModelWrapper(str(path)), images), feats)
    out = tmp_path / "build"
    run_flow(path, out, BuildConfig(board="pynq-z2", target_fps=1000))
    hw = ModelWrapper(str(out / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    streamlined = ModelWrapper(str(out / "intermediate_models" / "step_streamline.onnx"))
    assert np.array_equal(execute_batch(streamlined, images), feats)
    assert np.array_equal(execute_batch(hw.transform(Despecialize()), images), feats)
    pads = [n for n in hw.graph.node if n.op_type.startswith("FMPadding")]
    assert len(pads) == 3 and [str(hw.get_tensor_datatype(n.input[0])) for n in pads] == ["UINT8", "BINARY", "BINARY"]


def emulate(rows, images):
    """Numpy reading of extract_layers' rows (the documented semantics): uint8 NCHW -> +-1 features."""
    x = np.asarray(images).transpose(0, 2, 3, 1).astype(np.int64)  # NHWC; binary maps hold bits 0/1
    for r in rows:
        if r["conv"] is not None:
            c = r["conv"]
            top, left, bottom, right = c["padding"]
            x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))  # pixel 0 / bit 0 (= -1)
            (kh, kw), (sh, sw), (oh, ow) = c["kernel"], c["stride"], c["ofm_dim"]
            patches = np.stack([x[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] for i in range(kh) for j in range(kw)], 3)
            x = patches.reshape(x.shape[0], oh, ow, -1)  # (kh, kw, cin) with cin fastest
        else:
            x = x.reshape(x.shape[0], -1)  # NHWC flatten
        w = r["weights"].astype(np.int64)
        if r["domain"] == "popcount":
            acc = (x[..., None, :] == (w > 0)).sum(-1)  # xnor-popcount of bits
        else:
            acc = x @ w.T
        x = (acc >= r["thresholds"]).astype(np.int64)
        if r["pool"] is not None:
            (kh, kw), (sh, sw) = r["pool"]["kernel"], r["pool"]["stride"]
            oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
            x = np.max([x[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] for i in range(kh) for j in range(kw)], 0)
    return (2 * x - 1).reshape(x.shape[0], -1).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "padded"])
def test_extracted_layers_reproduce_the_features(tmp_path, preset):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import extract_layers, run_flow

    path, images, feats, _ = make_standin(preset, tmp_path, n_images=4)
    out = tmp_path / "build"
    run_flow(path, out, BuildConfig(board="pynq-z2", target_fps=500))
    rows = extract_layers(ModelWrapper(str(out / "intermediate_models" / "step_generate_estimate_reports.onnx")))
    n_layers = len(STANDIN_PRESETS[preset]["convs"]) + len(STANDIN_PRESETS[preset]["fcs"])
    assert len(rows) == n_layers
    assert [r["domain"] for r in rows] == ["acc"] + ["popcount"] * (n_layers - 1)
    assert rows[-1]["output_dtype"] == "BIPOLAR" and rows[0]["input_dtype"] == "UINT8"
    assert np.array_equal(emulate(rows, images), feats)
