"""``python -m export backbone``: cut, fold to integers, export to QONNX, verify, describe.

The export directory is built under a temporary name and renamed into place only after the
verification passed, so a failed export never leaves a directory that looks valid.
"""

import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from bnn_transfer.host.artifacts import BACKBONE, CHECKPOINT, EXPORT_MANIFEST, RUN_MANIFEST
from bnn_transfer.host.atomic import output_lock
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.intlayers import backbone_digest
from bnn_transfer.host.manifest import (
    atomic_dir,
    check_replaceable,
    finalize_manifest,
    load_manifest,
    new_manifest,
    package_versions,
    sha256_file,
)
from bnn_transfer.host.preprocess import Preprocess, eval_transform
from bnn_transfer.host.progress import log
from bnn_transfer.train.checkpoint import load_checkpoint, load_model_state
from bnn_transfer.train.datasets import open_dataset
from bnn_transfer.train.freeze import IntegerBackbone, fold_backbone
from bnn_transfer.train.models import ModelConfig, build_model

from .qonnx_graph import INPUT_DATATYPE, OUTPUT_DATATYPE, export_qonnx_backbone
from .verify import describe_failure, verify_backbone


@dataclass
class ExportConfig:
    run: str
    out: str
    cut: Optional[str] = None  # default: the run's own cut point (the paper's: fc3)
    preset: Optional[str] = None  # when given, the run must be of this preset
    verify_dataset: str = "synthetic"
    verify_data_dir: Optional[str] = None
    verify_images: int = 64


def verification_images(name, data_dir, pp: Preprocess, count):
    """``count`` test images spread over the split, preprocessed exactly as the host will."""
    ds = open_dataset(name, "test", data_dir)
    idx = np.linspace(0, len(ds) - 1, num=min(count, len(ds))).astype(int)
    out = []
    for i in idx:
        try:
            out.append(eval_transform(ds.load(int(i)), pp))
        except BnnError:
            continue  # an unreadable image is not the export's problem; the others still verify
    if not out:
        raise BnnError("%s: no readable test images to verify the export with" % name)
    return np.stack(out)


def load_trained(run_dir, preset=None):
    state = load_checkpoint(run_dir, expect_preset=preset)
    mcfg = ModelConfig.from_dict(state["model_config"])
    model = build_model(mcfg)
    load_model_state(model, state, os.path.join(run_dir, CHECKPOINT))
    return state, mcfg, model.eval()


def inference_cost(path):
    from qonnx.util.inference_cost import inference_cost as qonnx_cost

    res = qonnx_cost(path, cost_breakdown=True)
    total = res["total_cost"]
    per_layer = {
        name: {k: v for k, v in cost.items() if k.startswith(("op_mac", "mem_w"))}
        for name, cost in res.get("node_cost", {}).items()
        if any(k.startswith("op_mac") for k in cost)
    }
    return {
        "total_macs": total.get("total_macs"),
        "total_bops": total.get("total_bops"),
        "total_mem_w_bits": total.get("total_mem_w_bits"),
        "per_layer": per_layer,
    }


def up_to_date(cfg: ExportConfig):
    """The export in ``cfg.out`` when it was made from the same checkpoint with the same parameters."""
    if not os.path.exists(os.path.join(cfg.out, EXPORT_MANIFEST)):
        return None
    try:
        m = load_export(cfg.out)
    except BnnError:
        return None
    ckpt = os.path.join(cfg.run, CHECKPOINT)
    same_input = os.path.exists(ckpt) and m["inputs"].get("checkpoint", {}).get("sha256") == sha256_file(ckpt)
    return m if same_input and m["params"] == asdict(cfg) else None


def export_backbone(cfg: ExportConfig, progress=log):
    with output_lock(cfg.out):  # one writer per export directory
        return _export_backbone(cfg, progress)


def _export_backbone(cfg: ExportConfig, progress):
    done = up_to_date(cfg)
    if done is not None:
        progress("export: %s is up to date, skipping" % cfg.out)
        return done
    check_replaceable(cfg.out, EXPORT_MANIFEST, "backbone")  # before the work, not only at the swap
    state, mcfg, model = load_trained(cfg.run, cfg.preset)
    cut = cfg.cut or mcfg.cut
    if cut not in model.blocks:
        raise BnnError("--cut %r: no such layer in %s (layers: %s)" % (cut, cfg.run, ", ".join(model.blocks)))
    if cut == list(model.blocks)[0]:
        raise BnnError("--cut %r leaves nothing for the accelerator" % cut)
    layers = fold_backbone(model, cut)
    backbone = IntegerBackbone(layers)
    spec = mcfg.spec()
    pp = Preprocess.from_dict(state["preprocess"])
    images = verification_images(cfg.verify_dataset, cfg.verify_data_dir, pp, cfg.verify_images)

    with atomic_dir(cfg.out) as tmp:
        path = os.path.join(tmp, BACKBONE)
        progress("export: %s -> QONNX (cut before %s, %d binary layers)" % (cfg.run, cut, len(layers)))
        model_onnx = export_qonnx_backbone(layers, spec.input_size, path)
        progress("export: verifying on %d %s images (torch integer backbone vs qonnx execute_onnx)"
                 % (len(images), cfg.verify_dataset))
        ver = verify_backbone(backbone, model_onnx, images)
        if ver.first_divergence is not None or ver.mismatched_bits:
            raise BnnError("%s: export verification failed: %s" % (cfg.out, describe_failure(ver)))
        run_manifest = os.path.join(cfg.run, RUN_MANIFEST)
        inputs = {"checkpoint": {"path": os.path.abspath(os.path.join(cfg.run, CHECKPOINT)),
                                 "sha256": sha256_file(os.path.join(cfg.run, CHECKPOINT))}}
        if os.path.exists(run_manifest):
            inputs["run_manifest"] = {"path": os.path.abspath(run_manifest), "sha256": sha256_file(run_manifest)}
        manifest = new_manifest(
            "export", "backbone", params=asdict(cfg), inputs=inputs,
            preset=spec.name,
            preset_spec=spec.to_dict(),
            model_config=mcfg.to_dict(),
            cut=cut,
            layers=[{"name": il.name, "kind": il.kind, "weight_shape": list(il.weight.shape),
                     "stride": il.stride, "padding": il.padding, "pad_value": il.pad_value,
                     "pool": list(il.pool) if il.pool else None,
                     "threshold_range": [int(il.threshold.min()), int(il.threshold.max())],
                     "acc_bound": il.acc_bound} for il in layers],
            input={"name": model_onnx.graph.input[0].name, "shape": [1, 3, spec.input_size, spec.input_size],
                   "layout": "NCHW", "datatype": INPUT_DATATYPE},
            output={"name": model_onnx.graph.output[0].name, "shape": [1, backbone.feature_width],
                    "datatype": OUTPUT_DATATYPE},
            feature_width=backbone.feature_width,
            backbone_digest=backbone_digest(layers),
            preprocess=pp.to_dict(),
            classes=list(state["classes"]),
            inference_cost=inference_cost(path),
            verify=ver.to_dict(),
            versions=package_versions("torch", "brevitas", "qonnx", "onnx", "numpy"),
        )
        finalize_manifest(tmp, manifest, EXPORT_MANIFEST, files=[BACKBONE])
    progress("export: wrote %s (%d features, %d/%d bits identical)" % (
        cfg.out, backbone.feature_width, ver.images * backbone.feature_width, ver.images * backbone.feature_width))
    return manifest


def load_export(export_dir):
    """The export manifest, after checking every file's sha256 and the type of every field the later
    stages read; BnnError naming the file otherwise."""
    m = load_manifest(export_dir, EXPORT_MANIFEST, kind="backbone")
    where = os.path.join(export_dir, EXPORT_MANIFEST)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    checks = (
        ("feature_width", is_int(m.get("feature_width")), "a positive integer"),
        ("preset", isinstance(m.get("preset"), str), "a preset name"),
        ("cut", isinstance(m.get("cut"), str), "a layer name"),
        ("backbone_digest", isinstance(m.get("backbone_digest"), str), "a sha256 digest"),
        ("classes", isinstance(m.get("classes"), list) and all(isinstance(c, str) for c in m["classes"]),
         "a list of class names"),
        ("layers", isinstance(m.get("layers"), list) and all(isinstance(x, dict) for x in m["layers"]),
         "a list of layer descriptions"),
    )
    for field, ok, want in checks:
        if not ok:
            raise BnnError("%s: field %r must be %s, got %r" % (where, field, want, m.get(field)))
    try:
        Preprocess.from_dict(m.get("preprocess"))
    except BnnError as e:
        raise BnnError("%s: %s" % (where, e)) from None
    return m

