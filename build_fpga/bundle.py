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

from host.bundle import BUNDLE_KIND, BUNDLE_MANIFEST
from host.emulator import save_emulator
from host.errors import BnnError
from host.manifest import finalize_manifest, list_files, new_manifest, package_versions

EMULATOR = "emulator.npz"
ONNX = "backbone.onnx"
RUNTIME_WEIGHTS = "runtime_weights"  # FINN's driver folder name for external weight files
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def copy_runtime(root: str) -> List[str]:
    """host/ (the board runtime) and notebooks/ into the bundle, so it runs on the board as is."""
    copied = []
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".*")
    for name in ("host", "notebooks"):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(root, name), ignore=ignore)
            copied.append(name)
    return copied


def write_bundle(root: str, *, export_dir: str, export: Dict, export_sha: str, params: Dict, board,
                 emulator: EmulatorArrays, io: Dict, estimates: Dict, hw: Optional[Dict],
                 build_dir: Optional[str], weight_streams: Sequence[Dict] = ()) -> Dict:
    """Everything but report/ (written before) into ``root``, then manifest.json over all files.

    ``weight_streams`` (``external_weights.streamed_weights``): one ``runtime_weights/<dma>.npy`` each,
    the bytes the weight IODMA reads, in FINN's layout and with FINN's driver's file names; the io
    dict lists them with their repeat count per image (``host.bundle``), and the manifest hashes them.
    """
    save_emulator(os.path.join(root, EMULATOR), *emulator)
    shutil.copyfile(os.path.join(export_dir, ONNX), os.path.join(root, ONNX))
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
    fit = {r: {"used": estimates[r]["used"], "available": estimates[r]["available"],
               "margin": estimates[r]["margin"]} for r in ("lut", "ff", "bram18", "uram", "dsp")}
    manifest = new_manifest(
        "build_fpga", BUNDLE_KIND, params=params,
        inputs={"export": {"path": os.path.abspath(export_dir), "sha256": export_sha,
                           "backbone_digest": export["backbone_digest"]}},
        board=board.name,
        finn_board=board.finn_board,
        part=board.part,
        clock_mhz=float(estimates["clock_mhz"]),
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
        estimates={"fps": estimates["fps"], "latency_cycles": estimates["latency_cycles"],
                   "target_fps": estimates.get("target_fps"), "folding": estimates.get("folding_mode"), **fit},
        weights_memory=_weights_memory(streamed, io["runtime_writeable_weights"]),
        runtime=runtime,
        finn_build_dir=build_dir,
        hardware_build=None if hw is None else {"fifo": params.get("fifo"), "toolchain": hw.get("toolchain"),
                                                "timing": hw.get("timing")},
        versions=package_versions("finn-plus", "qonnx", "onnx", "numpy", "torch", "brevitas"),
    )
    with open(os.path.join(root, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(manifest, estimates, hw is not None, build_dir))
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


# ---------------------------------------------------------------------------------------- README

VIVADO_NOTES = """\
## Building the bitstream (needs Vivado)

finn-plus 1.6.1 does not pin one Vivado release in code: its package description asks for
"Vivado, Vitis, and Vitis HLS (2022.2 or 2024.2)"; `finn.util.basic.get_vivado_version` reads the
version from the `XILINX_VIVADO` path, and its code switches behaviour at 2024.2 (e.g. `vitis-run`
replaces `vitis_hls` after 2024.2 in `finn/util/hls.py`). Use 2022.2 or 2024.2. Then:

1. `source <Xilinx>/Vivado/<version>/settings64.sh` (and Vitis HLS's): `vivado` and `vitis_hls` on
   PATH, `XILINX_VIVADO` and `XILINX_HLS` set.
2. `finn deps update --accept-defaults` once: fetches finn-hlslib (HLS layers) and the board files
   (Pynq-Z1/Z2, Ultra96, KV260, ...) into FINN's dependency folder.
3. Re-run the same `python -m build_fpga ...` command without `--estimate-only`. A pre-flight names
   every missing piece first (one `error:` line each, nothing run); the environment FINN's own
   launcher would set (`FINN_BUILD_DIR`, `FINN_CUSTOM_HLS`, `LD_LIBRARY_PATH`, ...) is set by
   `build_fpga` itself; pick the disk with `--build-dir` (a synthesis run needs several GB).
4. It repeats the estimate steps (seconds), then runs FINN's hardware steps (HLS IP generation and
   FIFOs (`--fifo`), stitched IP, Zynq shell synthesis and bitstream, PYNQ driver), one terminal line
   per step, FINN's log in `<build dir>/hw-<key>/build_dataflow.log`, and puts `bitfile/finn-accel.bit`,
   `bitfile/finn-accel.hwh` and `driver/` into this bundle.
"""


def readme(manifest: Dict, est: Dict, hardware: bool, build_dir: Optional[str]) -> str:
    name = "bnn-transfer"
    lines = [
        "# Deploy bundle: %s preset on %s" % (manifest["preset"], manifest["board"]),
        "",
        "Frozen binary backbone (%d features from %dx%d RGB images) for the %s (%s, %s MHz), built by "
        "`python -m build_fpga`. `manifest.json` lists every file with its sha256; the host runtime "
        "refuses a bundle whose files changed." % (
            manifest["feature_width"], manifest["preprocess"]["input_size"], manifest["preprocess"]["input_size"],
            manifest["board"], manifest["part"], format(manifest["clock_mhz"], "g")),
        "",
        "| file | what |",
        "|---|---|",
        "| `manifest.json` | board, preset, preprocessing, feature width, FINN's io shapes, sha256 of every file |",
        "| `emulator.npz` | binary weights + integer thresholds read from FINN's final graph (bit-exact numpy model) |",
        "| `backbone.onnx` | the QONNX graph (the `onnx` backend, a slow reference on a PC) |",
        "| `bitfile/` | %s |" % ("`finn-accel.bit` + `.hwh` for PYNQ" if hardware
                                 else "absent: no Vivado at build time (see below)"),
        "| `report/` | FINN's estimates (`estimates.json`, `README.md`, `layers.png`), `folding_config.json`, "
        "`bitexact.json`, FINN's raw reports in `finn/` |",
        "| `host/`, `notebooks/` | the board runtime (numpy + PIL; pynq on the board) and demo notebooks |",
        "",
        "Estimated throughput: **%s img/s** at %s MHz (see `report/README.md`)." % (
            format(round(est["fps"]), ","), format(est["clock_mhz"], "g")),
        "",
        "## On the board",
        "",
        "Copy the whole folder to the board (PYNQ image, user `xilinx`):",
        "",
        "```bash",
        "scp -r DEPLOY_DIR xilinx@<board-ip>:/home/xilinx/jupyter_notebooks/%s" % name,
        "ssh xilinx@<board-ip>",
        "cd /home/xilinx/jupyter_notebooks/%s" % name,
        "python3 -m host fit --bundle . --dataset folder --data-dir ~/my-images --head float --out head.npz",
        "python3 -m host eval --bundle . --dataset folder --data-dir ~/my-images --head head.npz",
        "python3 -m host predict --bundle . --head head.npz photo.jpg",
        "```",
        "",
        "`--data-dir` holds one sub-folder per class (or `train/` and `test/` with class folders). "
        "The notebooks (`notebooks/transfer_learning.ipynb`, `live_classify.ipynb`, `throughput.ipynb`) open "
        "in the board's Jupyter at `http://<board-ip>:9090`. "
        + ("The `pynq` backend runs the FPGA; `--backend emulator` computes the same bits in numpy."
           if hardware else
           "This bundle has no bitfile yet: use `--backend emulator` (the same bits in numpy, slower) until a "
           "bitstream is built."),
        "",
        "On a PC, the same commands run from this folder with `python -m host ...` (numpy and pillow needed).",
        "",
    ]
    if not hardware:
        lines.append(VIVADO_NOTES)
    if build_dir:
        lines += [
            "## FINN's working folder",
            "",
            "FINN's intermediate models, HLS C++/RTL sources (with `--hw-codegen`) and logs were kept in "
            "`%s` (not part of the bundle: they are large and hold absolute paths of the build machine). "
            "A Vivado user re-runs the build command with `--build-dir` pointing there: a hardware build "
            "(`hw-<key>/`) stopped midway resumes from its last finished FINN step (`--clean` starts "
            "over)." % build_dir,
            "",
        ]
    else:
        lines += ["FINN's intermediate models were built in a temporary folder and removed (pass "
                  "`--build-dir DIR` or `--hw-codegen` to keep them).", ""]
    return "\n".join(lines)
