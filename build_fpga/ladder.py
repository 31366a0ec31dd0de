"""The bit-exactness ladder: every representation of the frozen backbone against its integer definition.

Rungs, each compared layer by layer with the torch integer backbone (``export.verify.compare_layers``):
the export's QONNX graph (checked by ``python -m export``), FINN's streamlined graph, FINN's folded HW
graph (python execution of its despecialized nodes), and the bundle's emulator. A difference names the
first layer where it happens. With ``--cppsim`` one more rung, :func:`cppsim_stage`: FINN's generated
HLS C++ compiled with g++ (``cppsim.py``), against the emulator and FINN's python execution. The
reference layers are read back from the export's QONNX graph and must hash to its ``backbone_digest``:
exactly what the torch side folded.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

from bnn_transfer.export.verify import compare_layers
from bnn_transfer.host.artifacts import BACKBONE
from bnn_transfer.host.errors import BnnError

from .finn_flow import FlowError
from .transforms import Despecialize


def execute_batch(model, x: np.ndarray) -> np.ndarray:
    """Run ``execute_onnx`` image by image (FINN graphs have batch 1); returns (N, ...) outputs."""
    from finn.core.onnx_exec import execute_onnx

    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    ishape = tuple(model.get_tensor_shape(iname))
    outs = []
    for i in range(x.shape[0]):
        xi = np.asarray(x[i : i + 1], dtype=np.float32)
        if xi.shape != ishape and xi.ndim == 4 and xi.transpose(0, 2, 3, 1).shape == ishape:
            xi = xi.transpose(0, 2, 3, 1)  # the dataflow graph takes NHWC
        outs.append(execute_onnx(model, {iname: xi.reshape(ishape)})[oname].reshape(1, -1))
    return np.concatenate(outs, 0)


def finn_layer_outputs(model, x: np.ndarray) -> List[np.ndarray]:
    """Every binary layer's +-1 output of a FINN graph (streamlined or despecialized HW), image by image.

    ``x``: uint8 values, NCHW (as for :func:`execute_batch`; transposed when the graph takes NHWC).
    A layer ends at a ``MultiThreshold`` (streamlined) or ``MVAU`` (HW graph; for a DSP layer the
    ``Thresholding`` after its MVAU) output, or at the max
    pool that follows it (``MaxPoolNHWC``/``MaxPool``, or the HW graph's window generator + ``Pool``).
    Returns one (N, -1) float32 array per layer in NHWC flattening order; FINN's BINARY {0,1} maps
    are turned into +-1 (bit 1 = +1).
    """
    from finn.core.onnx_exec import execute_onnx

    names = []
    for n in model.graph.node:
        if n.op_type not in ("MultiThreshold", "MVAU") and not n.op_type.startswith("MVAU_"):
            continue
        out = n.output[0]
        nxt = model.find_consumer(out)
        if nxt is not None and nxt.op_type.startswith("Thresholding"):  # a DSP layer's activation
            out = nxt.output[0]
            nxt = model.find_consumer(out)
        if nxt is not None and nxt.op_type in ("MaxPoolNHWC", "MaxPool"):
            out = nxt.output[0]
        elif nxt is not None and nxt.op_type.startswith("ConvolutionInputGenerator"):
            pool = model.find_consumer(nxt.output[0])
            if pool is not None and pool.op_type.startswith("Pool"):
                out = pool.output[0]
        names.append(out)
    iname = model.graph.input[0].name
    ishape = tuple(model.get_tensor_shape(iname))
    per_layer: List[List[np.ndarray]] = [[] for _ in names]
    for i in range(x.shape[0]):
        xi = np.asarray(x[i : i + 1], dtype=np.float32)
        if xi.shape != ishape and xi.ndim == 4 and xi.transpose(0, 2, 3, 1).shape == ishape:
            xi = xi.transpose(0, 2, 3, 1)  # the dataflow graph takes NHWC
        if xi.shape != ishape:
            raise FlowError("graph input %s has shape %s, got images of shape %s (NCHW expected)"
                            % (iname, list(ishape), list(x.shape)))
        ctx = execute_onnx(model, {iname: xi}, return_full_exec_context=True)
        for j, name in enumerate(names):
            v = np.asarray(ctx[name], dtype=np.float32).reshape(1, -1)
            if model.get_tensor_datatype(name).name == "BINARY":
                v = 2 * v - 1
            per_layer[j].append(v)
    return [np.concatenate(v, 0) for v in per_layer]


VERIFY_SEED = 0  # the verification images are the same on every machine


def reference_layers(export_dir: str, export: Dict):
    """The integer layers (train.freeze.IntLayer) of the export, read back from its QONNX graph.

    Weights are the BipolarQuant'ed initializers of each Conv/Gemm, thresholds the negated biases,
    geometry from export.json. They must hash to the export's ``backbone_digest``: then they are
    exactly what the torch side folded, without needing the checkpoint (which may not travel with
    the export directory).
    """
    from bnn_transfer.host.backends.onnx import load_qonnx
    from bnn_transfer.host.intlayers import IntLayer, backbone_digest

    path = os.path.join(export_dir, BACKBONE)
    model = load_qonnx(path)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    meta = export["layers"]
    if len(nodes) != len(meta):
        raise BnnError("%s: %d Conv/Gemm layers, but export.json describes %d" % (path, len(nodes), len(meta)))
    layers = []
    for i, (node, m) in enumerate(zip(nodes, meta)):
        producer = model.find_producer(node.input[1])
        w = model.get_initializer(producer.input[0] if producer is not None else node.input[1])
        bias = model.get_initializer(node.input[2]) if len(node.input) > 2 else None
        if w is None or bias is None or list(w.shape) != list(m["weight_shape"]):
            raise BnnError("%s: layer %s is not a binary layer with integer threshold of shape %s"
                           % (path, m["name"], m["weight_shape"]))
        threshold = np.round(-bias.astype(np.float64)).astype(np.int64)
        if not np.array_equal(threshold, -bias.astype(np.float64)):
            raise BnnError("%s: layer %s has non-integer thresholds" % (path, m["name"]))
        layers.append(IntLayer(
            name=m["name"], kind=m["kind"], weight=np.where(w >= 0, 1, -1).astype(np.int8), threshold=threshold,
            input_max=255 if i == 0 else 1, stride=int(m["stride"]), padding=int(m["padding"]),
            pad_value=float(m["pad_value"]), pool=tuple(int(v) for v in m["pool"]) if m["pool"] else None))
    if backbone_digest(layers) != export["backbone_digest"]:
        raise BnnError("%s: weights and thresholds do not match export.json's backbone_digest" % path)
    return layers


def verification_images(n: int, input_size: int, seed: int = VERIFY_SEED) -> np.ndarray:
    """``n`` seeded random uint8 NHWC images (the same on every machine)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, input_size, input_size, 3), dtype=np.uint8)


def _rows(a: np.ndarray, nchw: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4 and nchw:
        a = a.transpose(0, 2, 3, 1)  # compare in the accelerator's NHWC order
    return a.reshape(a.shape[0], -1)


def torch_stage(layers, images_nhwc: np.ndarray) -> List[np.ndarray]:
    """Per-layer outputs of the torch integer backbone (the reference), NHWC rows."""
    import torch

    from bnn_transfer.train.freeze import IntegerBackbone

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).astype(np.float32))
    return [_rows(o.numpy(), nchw=True) for o in IntegerBackbone(layers)(x, return_all=True)]


def qonnx_stage(model, images_nhwc: np.ndarray) -> List[np.ndarray]:
    from bnn_transfer.export.qonnx_graph import execute

    x = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).astype(np.float32)
    return [_rows(o, nchw=True) for o in execute(model, x, all_layers=True)]


def finn_stage(model, images_nhwc: np.ndarray) -> List[np.ndarray]:
    return finn_layer_outputs(model, np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def emulator_stage(emulator, images_nhwc: np.ndarray) -> List[np.ndarray]:
    return [_rows(o, nchw=False) for o in emulator.layer_outputs(images_nhwc)]


def divergence_message(stage: str, result: Dict, where: str) -> Optional[str]:
    if result["first_divergence"] is None and result["mismatched_bits"] == 0:
        return None
    return ("%s: %s differs from the torch integer backbone, first at layer %s (%d of %d feature bits differ "
            "over %d images)" % (where, stage, result["first_divergence"], result["mismatched_bits"],
                                 result["bits"], result["images"]))


def verify_build(layers, finn_dir: str, hw_model, finn_arrays, n_images: int, export: Dict, out: str, log) -> Dict:
    """FINN streamlined, FINN HW and emulator vs the torch integer backbone; BnnError on a difference."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnn_transfer.host.emulator import Emulator

    result = {"reference": "torch integer backbone (train.freeze.IntegerBackbone)", "seed": VERIFY_SEED,
              "images": int(n_images), "qonnx_at_export": export.get("verify"), "stages": {}}
    if n_images == 0:
        return result
    names = [il.name for il in layers]
    images = verification_images(n_images, int(export["preprocess"]["input_size"]))
    t0 = time.time()
    ref = torch_stage(layers, images)
    stages = [
        ("FINN streamlined graph", "finn_streamlined", lambda: finn_stage(
            ModelWrapper(os.path.join(finn_dir, "intermediate_models", "step_streamline.onnx")), images)),
        ("FINN HW graph", "finn_hw", lambda: finn_stage(hw_model.transform(Despecialize()), images)),
        ("emulator", "emulator", lambda: emulator_stage(Emulator(*finn_arrays), images)),
    ]
    for label, key, run in stages:
        res = compare_layers(ref, run(), names)
        result["stages"][key] = res
        msg = divergence_message(label, res, out)
        if msg:
            raise BnnError(msg)
    log("build_fpga: bit-exact on %d images: FINN streamlined, FINN HW and emulator == torch (%.0f s)"
        % (n_images, time.time() - t0))
    return result


# ------------------------------------------------------------------------------------- cppsim rung

CPPSIM_REFERENCES = ("emulator", "FINN HW graph, python")


def cppsim_stage(hw_model, build_dir: str, finn_arrays, names: List[str], n_images: int, input_size: int, headers,
                 log) -> Dict:
    """The cppsim rung for ``report/bitexact.json``: FINN's C++ simulation of ``hw_model``'s HLS layers
    (:func:`build_fpga.cppsim.simulate`) on ``n_images`` seeded images, every layer compared with the
    emulator and with FINN's python execution of the same graph.

    A difference is recorded (``mismatched_bits``, ``first_divergence`` naming the layer and its FINN
    node), not raised: :func:`cppsim_message` makes the error, after the report is written.
    """
    from bnn_transfer.host.emulator import Emulator

    from .cppsim import simulate

    images = verification_images(n_images, input_size)
    load = round(os.getloadavg()[0], 1)
    sim, got = simulate(hw_model, build_dir, images, headers, finn_layer_outputs)
    references = {"emulator": emulator_stage(Emulator(*finn_arrays), images),
                  "FINN HW graph, python": finn_stage(hw_model.transform(Despecialize()), images)}
    layer_node = dict(zip(names, [n.name for n in hw_model.graph.node if n.op_type.startswith("MVAU")]))
    compared = {label: compare_layers(references[label], got, names) for label in CPPSIM_REFERENCES}
    diverged = [c["first_divergence"] for c in compared.values() if c["first_divergence"] is not None]
    first = min(diverged, key=lambda n: names.index(n) if n in names else -1) if diverged else None
    rung = {
        "rung": "cppsim",
        "images": int(n_images),
        "seed": VERIFY_SEED,
        "layers_compiled": sim.compiled,
        "layers_python": sim.python,
        "mismatched_bits": max(abs(c["mismatched_bits"]) for c in compared.values()),
        "bits": int(got[-1].size),
        "first_divergence": None if first is None else "%s (%s)" % (first, layer_node.get(first, "?")),
        "compared_with": {k: {"mismatched_bits": c["mismatched_bits"], "first_divergence": c["first_divergence"]}
                          for k, c in compared.items()},
        "mismatched_bits_per_layer": {name: int(np.count_nonzero(r != g)) if r.shape == g.shape else -1
                                      for name, r, g in zip(names, references["emulator"], got)},
        "compiled_now": sim.built,
        "seconds": sim.seconds,
        "cpu_seconds": sim.cpu_seconds,
        "gxx_jobs": sim.jobs,
        "cpus": os.cpu_count(),
        "load_avg_1min_at_start": load,
        "headers": {"ap_types": headers.ap_include, "finn_hlslib": os.path.join(headers.finn_deps, "finn-hlslib"),
                    "vitis_hls": headers.vitis},
    }
    log("build_fpga: cppsim: %d HLS layers compiled (%d by g++ now, %.0f s), %d nodes in python (reasons in "
        "report/bitexact.json); %s on %d images (%.0f s)" % (
            len(sim.compiled), len(sim.built), sim.seconds["compile"], len(sim.python),
            "bit-exact with the emulator and FINN's python execution" if cppsim_message(rung, "") is None
            else "DIFFERENT", n_images, sim.seconds["simulate"]))
    return rung


def cppsim_message(rung: Dict, where: str) -> Optional[str]:
    if rung["first_divergence"] is None and rung["mismatched_bits"] == 0:
        return None
    against = " and ".join(k for k, c in rung["compared_with"].items()
                           if c["first_divergence"] is not None or c["mismatched_bits"])
    return ("%s: FINN's C++ simulation (cppsim) differs from the %s, first at layer %s (%d of %d feature bits "
            "differ over %d images)" % (where, against, rung["first_divergence"], rung["mismatched_bits"],
                                        rung["bits"], rung["images"]))
