"""External (DDR-streamed) weights through ``python -m build_fpga`` on the tiny preset: a folding file
that streams fc1 and fc2 gives a bundle whose runtime_weights/ hold exactly FINN's IODMA bytes, hashed in
the manifest and listed in its io dict, with the DDR bound in the report; one that streams a conv layer
is refused with one line naming the layer. The paper preset's own estimate is `python -m bench
--with-paper-finn` (minutes and GBs: not in CI)."""

import json
import os
import sys
from dataclasses import replace

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_build import HAVE_FINN, cli, make_export  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus, qonnx, brevitas and torch")

# tiny's MVAUs in FINN's names: conv1 = MVAU_rtl_0 (on DSPs), conv2..conv5 = MVAU_hls_0..3,
# fc1 = MVAU_hls_4 (128 -> 256), fc2 = MVAU_hls_5 (256 -> 256)
STREAM_FC = {"MVAU_hls_4": {"PE": 8, "SIMD": 16, "mem_mode": "external"},
             "MVAU_hls_5": {"PE": 8, "SIMD": 8, "mem_mode": "external"}}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_ext")
    return tmp, make_export(tmp, "tiny", seed=2)[1]


def _folding(path, entries):
    path.write_text(json.dumps(dict(entries, Defaults={})))
    return str(path)


@pytest.mark.slow
def test_streamed_fc_layers_reach_the_bundle_in_finns_layout(export):
    from finn.transformation.fpgadataflow.insert_iodma import InsertIODMA
    from finn.util.data_packing import to_external_tensor
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from bnn_transfer.host.bundle import load_bundle

    tmp, exp = export
    out, build_dir = tmp / "deploy", tmp / "build"
    r = cli("--export", exp, "--board", "pynq-z2", "--out", str(out), "--build-dir", str(build_dir),
            "--folding", _folding(tmp / "fold.json", STREAM_FC), "--verify-images", "2", tmp=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    b = load_bundle(str(out))
    assert b.io["input_dma_name"] == ["idma2"] and b.io["number_of_external_weights"] == 2
    assert [(w.dma, w.repeats) for w in b.external_weights] == [("idma0", 1), ("idma1", 1)]  # fc1, fc2
    assert {"runtime_weights/idma0.npy", "runtime_weights/idma1.npy"} <= set(b.manifest["files"])
    assert "fc1 (idma0" in b.manifest["weights_memory"] and "fc2 (idma1" in b.manifest["weights_memory"]

    # the bytes are what FINN's own code makes for the weight IODMA (InsertIODMA + to_external_tensor)
    model = ModelWrapper(str(build_dir / "finn" / "intermediate_models" / "step_generate_estimate_reports.onnx"))
    for node, dma in (("MVAU_hls_4", "idma0"), ("MVAU_hls_5", "idma1")):
        n = model.get_node_from_name(node)
        inst = getCustomOp(n)
        assert inst.get_nodeattr("mem_mode") == "external"
        finn = to_external_tensor(InsertIODMA(128).get_mem_init(model.get_initializer(n.input[1]),
                                                                inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")),
                                  model.get_tensor_datatype(n.input[1]))
        assert np.array_equal(np.load(os.path.join(b.root, "runtime_weights", dma + ".npy")), finn)

    est = json.loads((out / "report" / "estimates.json").read_text())
    ddr = est["ddr"]
    assert ddr["streamed_layers"] == ["fc1", "fc2"]
    assert ddr["weight_bytes_per_image"] == (128 * 256 + 256 * 256) // 8
    assert ddr["bytes_per_s"] == 64 / 8 * 100e6  # the Pynq-Z2's 64-bit HP0 port at 100 MHz
    assert ddr["fps"] == pytest.approx(8e8 / (ddr["weight_bytes_per_image"] + ddr["io_bytes_per_image"]))
    report = (out / "report" / "README.md").read_text()
    assert "**fc1, fc2 stream from DDR**" in report and "| DDR | %s |" % format(round(ddr["fps"]), ",") in report
    assert json.loads((out / "report" / "bitexact.json").read_text())["stages"]["finn_hw"]["mismatched_bits"] == 0


@pytest.mark.slow
def test_a_folding_that_streams_a_conv_layer_is_refused(export):
    tmp, exp = export
    out = tmp / "deploy_bad"
    fold = _folding(tmp / "bad.json", {"MVAU_hls_0": {"mem_mode": "external"}})
    r = cli("--export", exp, "--board", "pynq-z2", "--out", str(out), "--folding", fold, tmp=tmp)
    assert r.returncode == 2 and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [r.stderr.splitlines()[-1]]
    assert ("layer conv2 (MVAU_hls_0) has mem_mode external, but FINN streams external weights once per image and "
            "this conv layer reads its weights 196 times per image") in errors[0]
    assert not out.exists() and not [n for n in os.listdir(tmp) if n.startswith(".deploy_bad")]


def test_a_target_above_the_ddr_bound_is_refused():
    from test_flow import fake_estimate

    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.build import ddr_refusal
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.host.errors import BnnError

    est = replace(fake_estimate(get_board("kv260")), ddr={
        "fps": 232.6, "streamed_layers": ["fc1", "fc2"], "weight_bytes_per_image": 6815744,
        "io_bytes_per_image": 151040, "port": "128-bit S_AXI_HP0 at 100 MHz", "bytes_per_s": 1.6e9})
    ddr_refusal(est, BuildConfig(target_fps=200), "D")
    ddr_refusal(est, BuildConfig(), "D")
    with pytest.raises(BnnError, match=r"^D: the kv260 cannot keep up with --target-fps 300: streaming fc1, fc2 "
                                       r"from DDR moves 7\.0 MB per image over 128-bit S_AXI_HP0 at 100 MHz "
                                       r"\(1\.60 GB/s\), at most 233 img/s"):
        ddr_refusal(est, BuildConfig(target_fps=300), "D")
