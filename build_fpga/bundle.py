"""The deploy bundle: emulator weights from FINN's graph, the manifest host/ loads, the runtime copy.

The manifest follows ``host/bundle.py``'s schema exactly (kind "bundle"); ``load_bundle`` is the
judge. The emulator weights come from the final FINN dataflow graph (what the hardware gets, after
FINN's threshold rounding/clipping and bit-width minimization), and are checked against the torch
side's integers (``export.emulator_weights.emulator_arrays``) before anything is written:

- weights: identical, in the emulator's column order ((kh, kw, c) for convs, NHWC (h, w, c) for
  the first FC; FINN's ``RemoveCNVtoFCFlatten`` permutes fc1 the same way);
- thresholds: FINN's xnor layers compare ``popcount >= t``; with ``acc = 2*popcount - MW`` this is
  exactly ``acc >= 2t - MW``. FINN clips thresholds to its accumulator type's range, so raw values
  may differ from torch's; they must decide every *reachable* accumulator value the same way.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bnn_transfer import host
from bnn_transfer.host.artifacts import BACKBONE, BUNDLE_MANIFEST, EMULATOR, PC_DIR
from bnn_transfer.host.bundle import BUNDLE_KIND
from bnn_transfer.host.emulator import save_emulator
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import finalize_manifest, list_files, new_manifest, package_versions

from .bundle_readme import readme
from .estimate import Estimate

ONNX = PC_DIR + "/" + BACKBONE  # only the onnx backend on a PC reads it: the board copy leaves pc/ out
RUNTIME_WEIGHTS = "runtime_weights"  # FINN's driver folder name for external weight files
# notebooks/: a checkout's, or an installed copy's (pyproject.toml ships it as build_fpga/notebooks, a
# wheel having no place for a top-level folder that is not a package)
NOTEBOOK_DIRS = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "notebooks"),
                 os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks"))

EmulatorArrays = Tuple[Dict, List[np.ndarray], List[np.ndarray]]


# ------------------------------------------------------------------------------ emulator weights


def finn_emulator_arrays(rows: List[Dict], names: List[str], input_size: int) -> EmulatorArrays:
    """``finn_flow.extract_layers`` rows -> (spec, weights, thresholds) in host.emulator's format."""
    if len(rows) != len(names):
        raise BnnError("FINN's dataflow graph has %d matrix layers, the backbone %d" % (len(rows), len(names)))
    h = w = input_size
    c = 3
    spec_layers, weights, thresholds = [], [], []
    for r, name in zip(rows, names):
        mh, mw = r["weights"].shape
        t = r["thresholds"].astype(np.int64)
        if r["domain"] == "popcount":
            t = 2 * t - mw  # acc = 2*popcount - MW, so popcount >= t  <=>  acc >= 2t - MW (exact)
        conv = r["conv"]
        if conv is not None:
            (kh, kw), (sh, sw) = conv["kernel"], conv["stride"]
            pad = conv["padding"]
            if kh != kw or sh != sw or len(set(pad)) != 1:
                raise BnnError("%s (%s): only square kernels, strides and symmetric padding are emulated"
                               % (name, r["node"]))
            p = int(pad[0])
            in_shape = [conv["ifm_dim"][0] - 2 * p, conv["ifm_dim"][1] - 2 * p, conv["channels"]]
            h, w = conv["ofm_dim"]
            pool = None
            if r["pool"] is not None:
                pool = [int(r["pool"]["kernel"][0]), int(r["pool"]["stride"][0])]
                h, w = (h - pool[0]) // pool[1] + 1, (w - pool[0]) // pool[1] + 1
            # FINN pads the UINT8 image with pixel 0 and binary maps with the 0 bit, i.e. -1.
            pad_value = (0.0 if r["input_dtype"] == "UINT8" else -1.0) if p else 0.0
            entry = {"kind": "conv", "kernel": int(kh), "stride": int(sh), "padding": p, "pad_value": pad_value,
                     "pool": pool}
            c = mh
            out_shape = [int(h), int(w), int(c)]
        else:
            entry = {"kind": "fc", "kernel": None, "stride": 1, "padding": 0, "pad_value": 0.0, "pool": None}
            in_shape, out_shape = [int(mw)], [int(mh)]
        entry.update(name=name, in_shape=[int(v) for v in in_shape], out_shape=out_shape)
        spec_layers.append(entry)
        weights.append(np.ascontiguousarray(r["weights"], dtype=np.int8))
        thresholds.append(t)
    spec = {"input": {"shape": [input_size, input_size, 3], "datatype": "UINT8"}, "layers": spec_layers}
    return spec, weights, thresholds


def effective_thresholds(t: np.ndarray, w: np.ndarray, input_max: int) -> np.ndarray:
    """The smallest reachable accumulator value that counts as +1 (or one past the largest: never).

    Two thresholds are equivalent iff these agree. Binary inputs (+-1): acc has the parity of the
    fan-in MW and lies in [-MW, MW]. Pixel inputs (0..input_max): every integer between
    -input_max * (#weights -1) and input_max * (#weights +1) is reachable.
    """
    t = np.asarray(t, dtype=np.int64)
    w = np.asarray(w)
    if input_max == 1:
        mw = w.shape[1]
        up = t + (t + mw) % 2  # round up to the parity of MW
        return np.clip(up, -mw, mw + 2)
    lo = -input_max * (w < 0).sum(axis=1)
    hi = input_max * (w > 0).sum(axis=1)
    return np.clip(t, lo, hi + 1)


def check_emulator(finn: EmulatorArrays, torch_side: EmulatorArrays, layers, where: str) -> None:
    """Raise BnnError naming the first layer where FINN's weights/thresholds differ from torch's."""
    fspec, fw, ft = finn
    tspec, tw, tt = torch_side
    if fspec["input"] != tspec["input"]:
        raise BnnError("%s: FINN's graph takes %s, the torch backbone %s" % (where, fspec["input"], tspec["input"]))
    for i, (fl, tl, il) in enumerate(zip(fspec["layers"], tspec["layers"], layers)):
        name = tl["name"]
        diff = sorted(k for k in set(fl) | set(tl) if fl.get(k) != tl.get(k))
        if diff:
            raise BnnError("%s: layer %s differs between FINN's graph and the torch backbone in %s (%s vs %s)"
                           % (where, name, ", ".join(diff), [fl.get(k) for k in diff], [tl.get(k) for k in diff]))
        if fw[i].shape != tw[i].shape or not np.array_equal(fw[i], tw[i]):
            n = int(np.count_nonzero(fw[i] != tw[i])) if fw[i].shape == tw[i].shape else -1
            raise BnnError("%s: layer %s weights in FINN's graph differ from the torch backbone (%d of %d)"
                           % (where, name, n, tw[i].size))
        ef = effective_thresholds(ft[i], tw[i], il.input_max)
        et = effective_thresholds(tt[i], tw[i], il.input_max)
        bad = np.flatnonzero(ef != et)
        if bad.size:
            k = int(bad[0])
            raise BnnError("%s: layer %s thresholds in FINN's graph differ from the torch backbone on reachable "
                           "accumulators in %d channel(s) (first: channel %d, FINN %d vs torch %d)"
                           % (where, name, bad.size, k, int(ft[i][k]), int(tt[i][k])))


# ---------------------------------------------------------------------------------------- bundle


def notebooks_dir() -> str:
    """The notebooks every bundle ships, from :data:`NOTEBOOK_DIRS`."""
    for d in NOTEBOOK_DIRS:
        if os.path.isdir(d):
            return d
    raise BnnError("notebooks/: in neither %s nor %s; this copy of bnn-transfer is incomplete (reinstall it)"
                   % NOTEBOOK_DIRS)


def copy_runtime(root: str) -> List[str]:
    """host/ (the board runtime) and notebooks/ into the bundle, so it runs on the board as is."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".*")
    sources = {"host": os.path.dirname(os.path.abspath(host.__file__)), "notebooks": notebooks_dir()}
    for name, src in sources.items():
        shutil.copytree(src, os.path.join(root, name), ignore=ignore)
    return list(sources)


def write_bundle(root: str, *, export_dir: str, export: Dict, export_sha: str, params: Dict, board,
                 emulator: EmulatorArrays, io: Dict, estimates: Estimate, hw: Optional[Dict],
                 build_dir: Optional[str], weight_streams: Sequence[Dict] = ()) -> Dict:
    """Everything but report/ (written before) into ``root``, then manifest.json over all files.

    ``weight_streams`` (``external_weights.streamed_weights``): one ``runtime_weights/<dma>.npy`` each,
    the bytes the weight IODMA reads, in FINN's layout and with FINN's driver's file names; the io
    dict lists them with their repeat count per image (``host.bundle``), and the manifest hashes them.
    """
    save_emulator(os.path.join(root, EMULATOR), *emulator)
    os.makedirs(os.path.join(root, PC_DIR))
    shutil.copyfile(os.path.join(export_dir, BACKBONE), os.path.join(root, ONNX))
    bitfile = hwh = None
    if hw is not None:
        os.makedirs(os.path.join(root, "bitfile"))
        bitfile, hwh = "bitfile/finn-accel.bit", "bitfile/finn-accel.hwh"
        shutil.copyfile(hw["bitfile"], os.path.join(root, bitfile))
        shutil.copyfile(hw["hwh"], os.path.join(root, hwh))
        shutil.copytree(hw["driver_dir"], os.path.join(root, "driver"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    runtime = copy_runtime(root)
    io = dict(io)
    io["external_weights"] = []
    for w in weight_streams:
        rel = "%s/%s.npy" % (RUNTIME_WEIGHTS, w["dma"])
        os.makedirs(os.path.join(root, RUNTIME_WEIGHTS), exist_ok=True)
        np.save(os.path.join(root, rel), w["data"], allow_pickle=False)
        io["external_weights"].append({"dma": w["dma"], "file": rel, "repeats": int(w["repeats"]), "layer": w["layer"]})
    io["number_of_external_weights"] = len(io["external_weights"])
    # FINN's own .dat files, in the driver folder copied above: nothing of ours to get wrong.
    io["runtime_writeable_weights"] = [{"ip": w["ip"], "file": "driver/%s/%s" % (RUNTIME_WEIGHTS, w["file"]),
                                        "layer": w["layer"]} for w in (hw or {}).get("runtime_weights", [])]
    streamed = ", ".join("%s (%s, %s bytes per image)" % (w["layer"], w["dma"], format(w["data"].size, ","))
                         for w in weight_streams)
    fit = {name: {"used": r.used, "available": r.available, "margin": r.margin}
           for name, r in estimates.resources.items()}
    manifest = new_manifest(
        "build_fpga", BUNDLE_KIND, params=params,
        inputs={"export": {"path": os.path.abspath(export_dir), "sha256": export_sha,
                           "backbone_digest": export["backbone_digest"]}},
        board=board.name,
        finn_board=board.finn_board,
        part=board.part,
        clock_mhz=float(estimates.clock_mhz),
        preset=export["preset"],
        preprocess=dict(export["preprocess"]),
        feature_width=int(export["feature_width"]),
        backbone_digest=export["backbone_digest"],
        classes_pretrained=list(export.get("classes", [])),
        emulator=EMULATOR,
        bitfile=bitfile,
        hwh=hwh,
        onnx=ONNX,
        io=io,
        batch_layout="input NHWC uint8 [N, H, W, 3] (raw RGB bytes, preprocessing applied on the host); "
                     "output [N, feature_width] +-1 features; the first axis of every io shape is the batch",
        estimates={"fps": estimates.fps, "latency_cycles": estimates.latency_cycles,
                   "target_fps": estimates.target_fps, "folding": estimates.folding_mode, **fit},
        weights_memory=_weights_memory(streamed, io["runtime_writeable_weights"]),
        runtime=runtime,
        finn_build_dir=build_dir,
        hardware_build=None if hw is None else {"fifo": params.get("fifo"), "toolchain": hw.get("toolchain"),
                                                "timing": hw.get("timing")},
        versions=package_versions("finn-plus", "qonnx", "onnx", "numpy", "torch", "brevitas"),
    )
    with open(os.path.join(root, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(manifest, hw is not None, build_dir, root))
    # Notebooks are meant to be edited in the board's Jupyter (which rewrites them on save): hashing
    # them would turn the first save into a "tampered bundle".
    files = [f for f in list_files(root, exclude=(BUNDLE_MANIFEST,)) if not f.startswith("notebooks/")]
    return finalize_manifest(root, manifest, BUNDLE_MANIFEST, files=files)


def _weights_memory(streamed: str, runtime: Sequence[Dict]) -> str:
    where = ("external: %s stream from DDR, the other layers' weights are on chip" % streamed
             if streamed else "internal (all weights on chip; no external weight streams)")
    if runtime:
        where += "; %s in URAM, written over AXI-lite when the host loads the overlay" % ", ".join(
            w["layer"] for w in runtime)
    return where
