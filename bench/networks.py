"""The networks every measurement runs: one random, calibrated binary network per preset.

A trained checkpoint is not needed to time a network, but random BatchNorm statistics would be: with
them most thresholds fall outside the accumulator's range and every feature is constant, which
makes "bit-exact" trivially true. So, as ``tests/export/test_export.py`` does, the statistics are
those of a batch of random images (train-mode forward) and the BatchNorm scales are random with
mixed signs, kept away from zero (FINN asserts on the thresholds a near-zero scale produces).
Each network is built once per run and shared by the extraction and FINN measurements.
"""

import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from bnn_transfer.host.artifacts import CHECKPOINT

__all__ = ["Network", "Networks", "calibrated_model"]


def calibrated_model(preset: str, seed: int = 0, num_classes: int = 10):
    """The Brevitas network of ``preset`` in eval mode, with realistic random BatchNorm statistics."""
    from bnn_transfer.train.calibrate import calibrated_random_model
    from bnn_transfer.train.models import ModelConfig

    return calibrated_random_model(ModelConfig(preset=preset, num_classes=num_classes), seed)


@dataclass
class Network:
    """One preset's network in every form the measurements need; exports are made on first use."""

    preset: str
    input_size: int
    model: object  # train.models.AlexNet (Brevitas), eval mode
    layers: list  # train.freeze.IntLayer
    emulator: object  # host.emulator.Emulator
    workdir: str
    _paths: Dict[str, str] = field(default_factory=dict)

    def qonnx_path(self) -> str:
        """The QONNX graph of the integer backbone (export/qonnx_graph.py, as the deploy flow makes it)."""
        if "qonnx" not in self._paths:
            from bnn_transfer.export.qonnx_graph import export_qonnx_backbone

            path = os.path.join(self.workdir, "%s_backbone.onnx" % self.preset)
            export_qonnx_backbone(self.layers, self.input_size, path)
            self._paths["qonnx"] = path
        return self._paths["qonnx"]

    def export_dir(self) -> str:
        """An export directory of this network (``python -m export backbone`` on a run holding it)."""
        if "export" not in self._paths:
            from bnn_transfer.export.backbone import ExportConfig, export_backbone
            from bnn_transfer.host.preprocess import Preprocess
            from bnn_transfer.train.checkpoint import save_checkpoint

            run = os.path.join(self.workdir, "%s_run" % self.preset)
            os.makedirs(run, exist_ok=True)
            cfg = self.model.cfg
            save_checkpoint(os.path.join(run, CHECKPOINT), {
                "mode": "fit", "model_config": cfg.to_dict(), "classes": ["c%d" % i for i in range(cfg.num_classes)],
                "preprocess": Preprocess.for_input_size(self.input_size).to_dict(), "epoch": 1,
                "model": self.model.state_dict(), "metrics": {}})
            out = os.path.join(self.workdir, "%s_export" % self.preset)
            export_backbone(ExportConfig(run=run, out=out, verify_images=2), progress=lambda s: None)
            self._paths["export"] = out
        return self._paths["export"]

    def float_onnx_path(self) -> str:
        """A plain float ONNX graph of the same function, for onnxruntime.

        The QONNX graph does not run in onnxruntime (its Quant/BipolarQuant ops are qonnx custom
        ops), and Brevitas' float export of the quantized modules would put the float BatchNorm back.
        ``IntegerBackbone`` is the integer definition written with float ops (Conv/Gemm, Round,
        GreaterOrEqual, Where): exact, because every accumulator is an integer below 2**24.
        """
        if "float" not in self._paths:
            import torch

            from bnn_transfer.train.freeze import IntegerBackbone

            path = os.path.join(self.workdir, "%s_float.onnx" % self.preset)
            s = self.input_size
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(IntegerBackbone(self.layers).eval(), torch.zeros(1, 3, s, s), path,
                                  input_names=["x"], output_names=["y"], opset_version=17, dynamo=False,
                                  dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
            self._paths["float"] = path
        return self._paths["float"]

    def images(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` random NHWC uint8 images (the accelerator's input; speed does not depend on pixels)."""
        return np.random.default_rng(seed).integers(0, 256, (n, self.input_size, self.input_size, 3), dtype=np.uint8)


class Networks:
    """Builds each preset's network once per run."""

    def __init__(self, workdir: str, seed: int = 0):
        self.workdir = workdir
        self.seed = seed
        self._nets: Dict[str, Network] = {}

    def get(self, preset: str) -> Network:
        if preset not in self._nets:
            from bnn_transfer.export.emulator_weights import emulator_arrays
            from bnn_transfer.host.emulator import Emulator
            from bnn_transfer.train.freeze import fold_backbone
            from bnn_transfer.train.presets import get_preset

            size = get_preset(preset).input_size
            model = calibrated_model(preset, self.seed)
            layers = fold_backbone(model)
            self._nets[preset] = Network(preset, size, model, layers, Emulator(*emulator_arrays(layers, size)),
                                         self.workdir)
        return self._nets[preset]

    def drop(self, preset: str) -> Optional[Network]:
        """Forget a network (the paper preset holds ~1 GB in its forms)."""
        return self._nets.pop(preset, None)
