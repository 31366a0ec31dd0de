"""FINN's C++ simulation ("cppsim") of the generated HLS layers, compiled with g++ and no Xilinx install.

FINN's python execution of the hardware graph (a rung below) runs the *python* models of the nodes.
cppsim compiles the HLS C++ that FINN generates for each layer (finn-hlslib's matrix-vector-threshold
units with our weights and thresholds baked into ``thresh.h``/``params.h``) and runs it on images:
the code a Vivado user synthesizes, checked bit for bit before anyone owns Vivado. The steps are
FINN's own (``PrepareCppSim`` -> ``CompileCppSim`` -> ``SetExecMode("cppsim")`` -> ``execute_onnx``);
this module caches the compiled layers and decides,
with a reason for each, which nodes run in python instead.

The headers and the stand-ins for what only Vitis has: build_fpga/hls_toolchain.py.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from bnn_transfer.host.progress import progress_bar

from .hls_toolchain import CppSimError, Headers, finn_version, stage_toolchain, toolchain_env, toolchain_fingerprint

WORK = "cppsim"  # under the build directory: nodes/ (generated code), cache/ (compiled layers), hls/ (stand-ins)
GENERATED_STAMP = "generated.sha256"  # in a node's folder: node digest, source digest
RTL_REASON = "RTL node: no C++ model (RTL simulation needs Vivado's simulator); FINN runs its python model"


@dataclass
class CppSimModel:
    """The hardware graph ready for :func:`run`: compiled nodes in cppsim mode, the rest in python."""

    model: object  # qonnx ModelWrapper
    compiled: List[str]  # node names whose generated C++ runs
    python: Dict[str, str] = field(default_factory=dict)  # node name -> why it runs in python
    built: List[str] = field(default_factory=list)  # node names compiled in this call (cache misses)
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time of "compile" (incl. codegen), "simulate"
    # CPU time of the same phases, this process and its finished children (g++, the layer executables):
    # what they cost on an idle machine, whatever else the machine was doing.
    cpu_seconds: Dict[str, float] = field(default_factory=dict)
    jobs: int = 1  # g++ processes at once


# ------------------------------------------------------------------------------------- preparation


def generate(hw_model, work: Path, jobs: int = 1):
    """Copy of the HW graph with FINN's cppsim C++ generated for every HLS node, in ``work/nodes/<node>/``.

    Fixed folders, so the same layer generates the same bytes in every run (the executable reads its
    inputs from the folder path baked into its source). A folder is reused when its stamp says it
    was generated from this very node and its sources are unchanged since; otherwise FINN's
    ``PrepareCppSim`` regenerates it (seconds per layer: FINN writes the weights out in python).
    """
    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.util.fpgadataflow import is_hls_node
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(hw_model)
    stale = []
    for node in model.graph.node:
        if not is_hls_node(node):
            continue
        folder = work / "nodes" / node.name
        getCustomOp(node).set_nodeattr("code_gen_dir_cppsim", str(folder))
        want = _node_digest(model, node)
        stamp = folder / GENERATED_STAMP
        if stamp.is_file() and stamp.read_text().split() == [want, source_digest(folder, "")]:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        stale.append((node.name, folder, want))
    if stale:
        names = {name for name, _, _ in stale}
        only = copy.deepcopy(model)
        for node in [n for n in only.graph.node if n.name not in names]:
            only.graph.node.remove(node)  # PrepareCppSim generates every HLS node it sees
        only.transform(PrepareCppSim(num_workers=max(1, min(jobs, len(stale)))), cleanup=False)
        for _, folder, want in stale:
            (folder / GENERATED_STAMP).write_text("%s %s\n" % (want, source_digest(folder, "")))
    return model


def _node_digest(model, node) -> str:
    """The node (attributes, code folder included) and its initializers, under this FINN version."""

    h = hashlib.sha256(str(finn_version()).encode() + node.SerializeToString())
    for name in node.input:
        init = model.get_initializer(name)
        if init is not None:
            h.update(name.encode() + str(init.dtype).encode() + str(init.shape).encode() + init.tobytes())
    return h.hexdigest()


def source_digest(folder: Path, fingerprint: str) -> str:
    """Content hash of one node's generated sources (not the npy data or outputs written when it runs)."""
    h = hashlib.sha256(fingerprint.encode())
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".cpp", ".h", ".hpp"):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def compile_layers(model, work: Path, env: Dict[str, str], jobs: int,
                   progress: bool = True) -> CppSimModel:
    """Compile every HLS node of a :func:`generate`'d graph (cached), and set the graph up to run.

    Cache: ``work/cache/<source_digest>/node_model``; a hit compiles nothing. A failed compile is
    cached too (``error.txt``) and its node runs in python with the first g++ error as the reason,
    as does the depthwise window generator feeding such a node (FINN's cppsim model of the RTL
    generator interleaves channels for a compiled consumer; python Pool reads them in plain order).
    RTL nodes keep FINN's cppsim behaviour: their python model (:data:`RTL_REASON`).
    """
    from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
    from finn.util.fpgadataflow import is_hls_node
    from qonnx.custom_op.registry import getCustomOp

    from .transforms import despecialize_node

    fingerprint = toolchain_fingerprint(env)
    todo, failed, done = [], {}, {}
    for node in model.graph.node:
        if not is_hls_node(node):
            continue
        folder = Path(getCustomOp(node).get_nodeattr("code_gen_dir_cppsim"))
        entry = work / "cache" / source_digest(folder, fingerprint)
        if (entry / "node_model").is_file():
            done[node.name] = entry
        elif (entry / "error.txt").is_file():
            failed[node.name] = (entry / "error.txt").read_text().strip()
        else:
            todo.append((node, entry))

    def build(node, entry):
        try:
            CompileCppSim().applyNodeLocal(node)
        except subprocess.CalledProcessError as e:
            return _cache_failure(entry, _first_error(e.stderr or e.output or str(e)))
        return _cache_success(entry, Path(getCustomOp(node).get_nodeattr("executable_path")))

    built = []
    # biggest first, so the last job does not run alone
    todo.sort(key=lambda ne: -sum(p.stat().st_size for p in Path(getCustomOp(ne[0]).get_nodeattr(
        "code_gen_dir_cppsim")).iterdir() if p.suffix in (".cpp", ".h")))
    if todo:
        bar = progress_bar(len(todo), "cppsim: g++ (%d jobs)" % jobs, progress, unit="layer")
        # FINN's compile line reads XILINX_HLS etc. from os.environ: set once for all threads.
        with toolchain_env(env), _quiet_finn_log(), ThreadPoolExecutor(max(1, min(jobs, len(todo)))) as pool:
            futures = {pool.submit(build, n, e): (n, e) for n, e in todo}
            for fut in as_completed(futures):
                node, entry = futures[fut]
                error = fut.result()
                if error:
                    failed[node.name] = error
                else:
                    done[node.name] = entry
                    built.append(node.name)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    for node in model.graph.node:
        if node.name in done:
            getCustomOp(node).set_nodeattr("executable_path", str(done[node.name] / "node_model"))
    python = {}
    for node in model.graph.node:
        if node.name in failed:
            python[node.name] = "does not compile with the headers at hand: %s" % failed[node.name]
            feeder = model.find_producer(node.input[0])
            if (feeder is not None and feeder.op_type.startswith("ConvolutionInputGenerator")
                    and getCustomOp(feeder).get_nodeattr("depthwise")):
                python[feeder.name] = "depthwise window generator feeding %s, which runs in python" % node.name
        elif node.domain.endswith(".rtl"):
            python.setdefault(node.name, RTL_REASON)
    for node in model.graph.node:
        if node.name in python and python[node.name] != RTL_REASON:
            despecialize_node(node)
    model = model.transform(SetExecMode("cppsim"))
    compiled = [n.name for n in model.graph.node if n.name in done]
    return CppSimModel(model=model, compiled=compiled, python=python, built=sorted(built))


@contextlib.contextmanager
def _quiet_finn_log() -> Iterator[None]:
    # FINN logs a failed compile's whole g++ output; its first error line becomes the reason instead.
    log = logging.getLogger("finn_logger")
    saved = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(saved)


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (errors or [ln for ln in lines if ln] or ["g++ failed"])[0]
    return line[:300]


def _cache_success(entry: Path, executable: Path) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executable.parent / "compile.sh", entry / "compile.sh")
    os.replace(executable, entry / "node_model")  # last: an entry counts once its executable is there
    return None


def _cache_failure(entry: Path, error: str) -> str:
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / "error.txt.tmp"
    tmp.write_text(error + "\n")
    os.replace(tmp, entry / "error.txt")
    return error


# ------------------------------------------------------------------------------------------ running


def run(sim: CppSimModel, images_nhwc: np.ndarray, layer_outputs: Callable, progress: bool = True) -> List[np.ndarray]:
    """Per-layer outputs of the simulated graph, image by image (``layer_outputs``: FINN graph, NCHW
    batch -> per-layer (N, -1) rows, e.g. the ladder's ``finn_layer_outputs``)."""
    bar = progress_bar(images_nhwc.shape[0], "cppsim: simulating", progress, unit="img")
    per_image = []
    for i in range(images_nhwc.shape[0]):
        x = np.ascontiguousarray(images_nhwc[i : i + 1].transpose(0, 3, 1, 2))
        per_image.append(layer_outputs(sim.model, x))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [np.concatenate([img[k] for img in per_image], 0) for k in range(len(per_image[0]))]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def simulate(hw_model, build_dir, images_nhwc: np.ndarray, headers: Headers, layer_outputs: Callable,
             jobs: Optional[int] = None, progress: bool = True):
    """Generate, compile (cached) and run FINN's C++ simulation of ``hw_model`` on ``images_nhwc``.

    Runs inside a FINN session rooted at ``build_dir`` (``build_dir/cppsim`` holds everything written).
    Returns (:class:`CppSimModel`, per-layer outputs).
    """
    from .finn_env import finn_session

    work = Path(build_dir).resolve() / WORK
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, min(jobs or cpus, cpus))
    t0, c0 = time.time(), _cpu()
    with toolchain_env({"FINN_DEPS": headers.finn_deps}), finn_session(work / "finn", num_workers=jobs):
        env = stage_toolchain(headers, work)
        with toolchain_env(env):
            model = generate(hw_model, work, jobs)
        sim = compile_layers(model, work, env, jobs, progress)
        if not sim.compiled:
            raise CppSimError("cppsim: no HLS layer compiled (%s)" % "; ".join(
                "%s: %s" % kv for kv in sim.python.items() if kv[1] != RTL_REASON))
        t1, c1 = time.time(), _cpu()
        with toolchain_env(env):
            outputs = run(sim, images_nhwc, layer_outputs, progress)
    sim.seconds = {"compile": round(t1 - t0, 1), "simulate": round(time.time() - t1, 1)}
    sim.cpu_seconds = {"compile": round(c1 - c0, 1), "simulate": round(_cpu() - c1, 1)}
    sim.jobs = jobs
    return sim, outputs
