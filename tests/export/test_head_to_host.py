"""The documented path train finetune -> export head -> host eval, end to end on the same features.

The bundle is the CPU twin of ``python -m build_fpga``'s: the emulator weights the build checks
FINN's graph against (``export.emulator_weights``) and the export manifest's preset, preprocessing,
feature width and backbone digest, which ``build_fpga.bundle.write_bundle`` copies unchanged.
"""

import json
import os
import subprocess
import sys

import pytest

from bnn_transfer.export.backbone import ExportConfig, export_backbone, load_trained
from bnn_transfer.export.emulator_weights import emulator_arrays
from bnn_transfer.export.head import export_head
from bnn_transfer.host.packing import packed_shape
from bnn_transfer.train.fit import FitConfig, evaluate_run, run
from bnn_transfer.train.freeze import fold_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "host"))
from fake_pynq import make_bundle, tiny_io  # noqa: E402

OPTIONS = {"n_train_per_class": 24, "n_test_per_class": 6, "num_classes": 6}


@pytest.mark.slow
def test_exported_head_gets_train_evals_top1_on_the_host(tmp_path):
    common = dict(preset="tiny", dataset="synthetic", dataset_options=dict(OPTIONS), batch_size=16, workers=0, seed=2)
    run(FitConfig(out=str(tmp_path / "pre"), epochs=6, **common), progress=False)
    ft = str(tmp_path / "ft")
    run(FitConfig(out=ft, epochs=2, head="float", cut="fc3", init_from=str(tmp_path / "pre"), **common),
        "finetune", progress=False)

    export = export_backbone(ExportConfig(run=ft, out=str(tmp_path / "export"), verify_images=2),
                             progress=lambda s: None)
    _, _, model = load_trained(ft)
    width = export["feature_width"]
    io = tiny_io()
    size = export["preprocess"]["input_size"]
    io.update(ishape_normal=[[1, size, size, 3]], oshape_normal=[[1, width]], oshape_folded=[[1, width // 4, 4]],
              ishape_folded=[[1, size, size, 1, 3]])
    io.update(ishape_packed=[list(packed_shape(io["ishape_folded"][0], "UINT8"))],
              oshape_packed=[list(packed_shape(io["oshape_folded"][0], "BIPOLAR"))])
    bundle = make_bundle(tmp_path / "deploy", with_bitfile=False, io=io,
                         network=emulator_arrays(fold_backbone(model), size),
                         preset=export["preset"], preprocess=export["preprocess"], feature_width=width,
                         backbone_digest=export["backbone_digest"])

    head = str(tmp_path / "head.npz")
    export_head(ft, head)
    args = ["--dataset", "synthetic"] + sum((["--option", "%s=%d" % kv] for kv in OPTIONS.items()), [])
    r = subprocess.run([sys.executable, "-m", "host", "eval", "--bundle", bundle, "--head", head, "--board", "",
                        "--backend", "emulator", "--no-cache", "--quiet"] + args,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    host_eval = json.loads(r.stdout.strip().splitlines()[-1])

    ref = evaluate_run(ft, "synthetic", dataset_options=dict(OPTIONS), batch_size=16, workers=0, device="cpu")
    # Same +-1 features (the emulator is bit-exact with the integer backbone train eval runs) and the
    # same float32 fc3: the predictions, hence top-1 and top-5, are identical, not merely close.
    assert host_eval["images"] == ref["images"] == 6 * OPTIONS["n_test_per_class"]
    n = ref["images"]
    assert round(host_eval["top1"] * n) == round(ref["top1"] * n), (host_eval, ref)
    assert round(host_eval["top5"] * n) == round(ref["top5"] * n), (host_eval, ref)
    assert ref["top1"] > 1.5 / OPTIONS["num_classes"], ref  # a head that learnt something, not chance twice
