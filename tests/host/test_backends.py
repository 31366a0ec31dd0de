import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
from fake_pynq import FEATURE_WIDTH, INPUT_SIZE, make_bundle, tiny_network

from bnn_transfer.host.backends import BACKENDS, available_backends, check_images, make_backend
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.emulator import Emulator
from bnn_transfer.host.errors import BnnError

HAVE_ONNX_STACK = all(importlib.util.find_spec(m) is not None for m in ("qonnx", "brevitas", "torch"))


def _images(n, seed=0, size=INPUT_SIZE):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3)).astype(np.uint8)


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_bundle(tmp_path / "bundle"))


def test_emulator_backend_equals_emulator(bundle):
    spec, ws, ts = tiny_network()
    x = _images(23, seed=1)
    want = Emulator(spec, ws, ts).extract(x)
    assert len(np.unique(want, axis=0)) > 10  # the network separates images: equality means something
    with make_backend("emulator", bundle) as b:
        assert b.name == "emulator"
        for bs in (None, 1, 5, 23, 64):
            got = b.extract(x, batch_size=bs)
            assert got.dtype == np.int8 and got.shape == (23, FEATURE_WIDTH)
            assert np.array_equal(got, want)
        assert b.extract(x[:0]).shape == (0, FEATURE_WIDTH)


@pytest.mark.parametrize("images,message", [
    (_images(2).astype(np.float32), r"^images: expected dtype uint8 \(raw pixels 0\.\.255\), got float32$"),
    (_images(2, size=9), r"^images: expected 8x8 images, got 9x9"),
    (_images(2)[..., :1], r"^images: expected 3 channels \(RGB, channels last\), got 1"),
    (_images(2).transpose(0, 3, 1, 2).copy(), r"^images: expected 3 channels"),  # NCHW by mistake
    (_images(1)[0], r"^images: expected a uint8 NHWC batch \(N, 8, 8, 3\), got rank 3"),
    (_images(2).tolist(), r"^images: expected a numpy uint8 NHWC batch"),
])
def test_bad_images_get_one_line_errors(bundle, images, message):
    b = make_backend("emulator", bundle)
    with pytest.raises(BnnError, match=message) as e:
        b.extract(images)
    assert "\n" not in str(e.value)
    with pytest.raises(BnnError, match=message):
        check_images(images, bundle)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "8"])
def test_bad_batch_size(bundle, bs):
    with pytest.raises(BnnError, match=r"^batch_size: expected a positive integer"):
        make_backend("emulator", bundle).extract(_images(2), batch_size=bs)


def test_unknown_backend(bundle):
    assert tuple(BACKENDS) == ("pynq", "emulator", "onnx")
    with pytest.raises(BnnError, match=r"^backend: unknown backend 'fpga' \(choose from pynq, emulator, onnx\)$"):
        make_backend("fpga", bundle)


def test_emulator_that_disagrees_with_the_manifest_is_refused(tmp_path):
    spec, ws, ts = tiny_network()
    spec["layers"][-1]["out_shape"] = [FEATURE_WIDTH - 2]
    root = make_bundle(tmp_path / "b", network=(spec, [ws[0], ws[1][:-2]], [ts[0], ts[1][:-2]]))
    with pytest.raises(BnnError, match=r"emulator\.npz: emulator takes \(8, 8, 3\) images and gives 10 features, "
                                       r"but the bundle manifest says \(8, 8, 3\) and 12$"):
        make_backend("emulator", load_bundle(root))


def test_available_backends(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # no pynq, whatever this machine has
    with_bit = load_bundle(make_bundle(tmp_path / "a"))
    assert available_backends(with_bit) == ["emulator"]
    no_bit = load_bundle(make_bundle(tmp_path / "b", with_bitfile=False))
    with pytest.raises(BnnError, match=r"b: bundle has no bitfile .*use --backend emulator"):
        make_backend("pynq", no_bit)
    with pytest.raises(BnnError, match=r"b: bundle has no QONNX graph"):
        make_backend("onnx", no_bit)
    with pytest.raises(BnnError, match=r"^pynq backend: .* cannot import the pynq package; on a PYNQ board run as "
                                       r"root in PYNQ's Python.*'sudo -i'.*--backend emulator"):
        make_backend("pynq", with_bit)


def test_onnx_backend_without_qonnx(tmp_path, monkeypatch):
    onnx_file = tmp_path / "g.onnx"
    onnx_file.write_bytes(b"not really a graph")
    b = load_bundle(make_bundle(tmp_path / "b", onnx_file=str(onnx_file)))
    # Other tests may have imported qonnx's submodules already: block every one of them.
    for name in [m for m in sys.modules if m == "qonnx" or m.startswith("qonnx.")] + ["qonnx"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert available_backends(b) == ["emulator"]
    with pytest.raises(BnnError, match=r"^onnx backend needs qonnx \(pip install qonnx\)$"):
        make_backend("onnx", b)


@pytest.mark.skipif(importlib.util.find_spec("qonnx") is None, reason="needs qonnx")
def test_onnx_backend_refuses_an_unreadable_graph(tmp_path):
    onnx_file = tmp_path / "g.onnx"
    onnx_file.write_bytes(b"not really a graph")
    b = load_bundle(make_bundle(tmp_path / "b", onnx_file=str(onnx_file)))
    with pytest.raises(BnnError, match=r"backbone\.onnx: cannot read the QONNX graph"):
        make_backend("onnx", b)


def _export_tiny_qonnx(path, seed=3):
    """A brevitas network with the integer semantics of ``tiny_network``, exported to QONNX.

    conv3x3 (pad 1) -> sign(acc - T) -> maxpool 2 -> fc -> sign(acc - T): binary weights with
    scale 1 and the thresholds as biases -T, so the float graph computes exactly the emulator's
    ``acc >= T``. Returns the emulator network built from the same integers.
    """
    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
    from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    class UnitBinaryWeight(SignedBinaryWeightPerTensorConst):
        scaling_const = 1.0

    spec, ws, ts = tiny_network(seed)
    conv = QuantConv2d(3, 4, 3, padding=1, bias=True, weight_quant=UnitBinaryWeight)
    fc = QuantLinear(64, FEATURE_WIDTH, bias=True, weight_quant=UnitBinaryWeight)
    # emulator columns are (kh, kw, c) for the conv and (h, w, c) for the fc; torch's are c-first
    w_conv = ws[0].reshape(4, 3, 3, 3).transpose(0, 3, 1, 2)
    w_fc = ws[1].reshape(FEATURE_WIDTH, 4, 4, 4).transpose(0, 3, 1, 2).reshape(FEATURE_WIDTH, 64)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w_conv.astype(np.float32)))
        conv.bias.copy_(torch.from_numpy(-ts[0].astype(np.float32)))
        fc.weight.copy_(torch.from_numpy(w_fc.astype(np.float32)))
        fc.bias.copy_(torch.from_numpy(-ts[1].astype(np.float32)))
    net = torch.nn.Sequential(
        conv, QuantIdentity(act_quant=SignedBinaryActPerTensorConst), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        fc, QuantIdentity(act_quant=SignedBinaryActPerTensorConst),
    ).eval()
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    # dynamo=False: the dynamo exporter of brevitas 0.13.4 silently drops the biases
    export_qonnx(net, example, export_path=str(path), dynamo=False)
    cleanup_model(ModelWrapper(str(path))).save(str(path))
    return spec, ws, ts


@pytest.mark.skipif(not HAVE_ONNX_STACK, reason="needs qonnx, brevitas and torch")
def test_onnx_backend_equals_emulator_on_a_brevitas_export(tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    network = _export_tiny_qonnx(onnx_file)
    bundle = load_bundle(make_bundle(tmp_path / "b", onnx_file=str(onnx_file), network=network))
    assert "onnx" in available_backends(bundle)
    x = _images(20, seed=5)
    want = make_backend("emulator", bundle).extract(x)
    assert len(np.unique(want, axis=0)) >= 6  # not a constant: equality below means something
    with make_backend("onnx", bundle) as b:
        got = b.extract(x, batch_size=5)
    assert got.dtype == np.int8 and np.array_equal(got, want)


@pytest.mark.skipif(not HAVE_ONNX_STACK, reason="needs qonnx, brevitas and torch")
def test_onnx_backend_refuses_a_graph_of_another_input_size(tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    _export_tiny_qonnx(onnx_file)
    bundle = load_bundle(make_bundle(tmp_path / "b", onnx_file=str(onnx_file)))
    bundle = dataclasses.replace(bundle, input_shape=(16, 16, 3))  # what a mismatched build would claim
    with pytest.raises(BnnError, match=r"backbone\.onnx: graph input .* has shape \[1, 3, 8, 8\], the bundle needs "
                                       r"\(1, 3, 16, 16\) \(NCHW\)"):
        make_backend("onnx", bundle)
