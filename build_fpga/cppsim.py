"""FINN's C++ simulation ("cppsim") of the generated HLS layers, compiled with g++ and no Xilinx install.

FINN's python execution of the hardware graph (a rung below) runs the *python* models of the nodes.
cppsim compiles the HLS C++ that FINN generates for each layer (finn-hlslib's matrix-vector-threshold
units with our weights and thresholds baked into ``thresh.h``/``params.h``) and runs it on images:
the code a Vivado user synthesizes, checked bit for bit before anyone owns Vivado. The steps are
FINN's own (``PrepareCppSim`` -> ``CompileCppSim`` -> ``SetExecMode("cppsim")`` -> ``execute_onnx``);
this module finds the headers, supplies what only Vitis has, caches the compiled layers and decides,
with a reason for each, which nodes run in python instead.

Headers, in this order (:func:`find_headers`): ``$XILINX_HLS/include`` when Vitis HLS is installed
(then nothing is stood in); otherwise an open ap_types directory (``--hls-include DIR``, e.g. the
``include/`` of github.com/Xilinx/HLS_arbitrary_Precision_Types). finn-hlslib always comes from FINN's
deps folder (``FINN_DEPS``, filled by ``finn deps update``). Without Vitis, :func:`stage_toolchain`
writes into the build directory a stand-in ``XILINX_HLS`` with the Vitis-only headers no open set has
(``hls_vector.h``, ``ap_axi_sdata.h``, the ``half`` type) and empty archives for the float libraries
FINN's link line names (binary layers use no float): never into the user's tree.
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

from host.errors import BnnError
from host.manifest import package_versions
from host.progress import progress_bar

# Vitis-only declarations that finn-hlslib and FINN's npy stream templates include. Only what the
# compiled layers instantiate has to be right: hls::vector as an array, qdma_axis as a data/keep/last
# record, half as the compiler's 16-bit float (g++ >= 12). They sit in the stand-in
# $XILINX_HLS/include, searched before the open headers (CPATH), so ap_int.h can wrap the open one.
STANDIN_HEADERS = {
    "ap_int.h": """\
// Stand-in wrapper, written by bnn-transfer's build_fpga/cppsim.py for FINN's C++ simulation only:
// the open ap_int.h (next on the include path), plus the half type that Vitis's ap_int.h also
// brings and that FINN's cnpy.h and finn-hlslib's flatten.hpp name. Not used with Vitis HLS.
#include_next <ap_int.h>
#ifndef BNN_TRANSFER_HALF
#define BNN_TRANSFER_HALF
typedef _Float16 half;
#endif
""",
    "hls_vector.h": """\
// Stand-in for Vitis HLS's hls_vector.h (not in the open HLS headers), written by bnn-transfer's
// build_fpga/cppsim.py for FINN's C++ simulation only. With Vitis HLS installed it is not used.
#ifndef BNN_TRANSFER_HLS_VECTOR_H
#define BNN_TRANSFER_HLS_VECTOR_H
#include <array>
#include <cstddef>

namespace hls {
template <typename T, size_t N>
struct vector : std::array<T, N> {};
}  // namespace hls
#endif
""",
    "ap_axi_sdata.h": """\
// Stand-in for Vitis HLS's ap_axi_sdata.h (not in the open HLS headers), written by bnn-transfer's
// build_fpga/cppsim.py for FINN's C++ simulation only. With Vitis HLS installed it is not used.
#ifndef BNN_TRANSFER_AP_AXI_SDATA_H
#define BNN_TRANSFER_AP_AXI_SDATA_H
#include <ap_int.h>

template <int D, int U, int TI, int TD>
struct qdma_axis {
    ap_uint<D> data;
    ap_uint<(D + 7) / 8> keep;
    ap_uint<1> last;
    ap_uint<D> get_data() const { return data; }
    void set_data(ap_uint<D> d) { data = d; }
    void set_keep(ap_uint<(D + 7) / 8> k) { keep = k; }
    void set_last(ap_uint<1> l) { last = l; }
};
#endif
""",
}
# FINN's compile line links these from $XILINX_HLS/lnx64 (Vitis's float models); an empty archive is
# a valid one and nothing of it is needed by binary layers.
LINK_ARCHIVES = (
    "lnx64/lib/csim/libhlsmc++-GCC46.a",
    "lnx64/tools/fpo_v7_1/libgmp.a",
    "lnx64/tools/fpo_v7_1/libmpfr.a",
    "lnx64/tools/fpo_v7_1/libIp_floating_point_v7_1_bitacc_cmodel.a",
)
EMPTY_ARCHIVE = b"!<arch>\n"
GET_AP_TYPES = ("install Vitis HLS and set XILINX_HLS, or pass --hls-include DIR with the open ap_types headers "
                "(include/ of github.com/Xilinx/HLS_arbitrary_Precision_Types)")
GET_HLSLIB = "run `finn deps update`, or set FINN_DEPS to a folder holding finn-hlslib/"
WORK = "cppsim"  # under the build directory: nodes/ (generated code), cache/ (compiled layers), hls/ (stand-ins)
GENERATED_STAMP = "generated.sha256"  # in a node's folder: node digest, source digest
RTL_REASON = "RTL node: no C++ model (RTL simulation needs Vivado's simulator); FINN runs its python model"


class CppSimError(BnnError):
    pass


@dataclass(frozen=True)
class Headers:
    """Where FINN's cppsim compile line finds its headers (see the module docstring)."""

    ap_include: str  # folder holding ap_int.h and hls_stream.h
    finn_deps: str  # folder holding finn-hlslib/
    vitis: bool  # ap_include is $XILINX_HLS/include: no stand-ins


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


# ------------------------------------------------------------------------------------------ headers


def find_headers(hls_include: Optional[str] = None, finn_deps: Optional[str] = None,
                 environ: Optional[Dict[str, str]] = None) -> Headers:
    """The headers FINN's cppsim compile needs; CppSimError (one line) naming what is missing.

    ``finn_deps`` defaults to FINN_DEPS, else the deps folder of FINN's settings.
    """
    env = os.environ if environ is None else environ
    missing, hints = [], []
    vitis = env.get("XILINX_HLS")
    if vitis and _has(Path(vitis) / "include", "ap_int.h", "hls_stream.h"):
        ap_include, is_vitis = str(Path(vitis) / "include"), True
    else:
        ap_include, is_vitis = str(Path(hls_include).resolve()) if hls_include else "", False
        if not hls_include or not _has(Path(ap_include), "ap_int.h", "hls_stream.h"):
            missing.append("ap_int.h/hls_stream.h " + (
                "in --hls-include %s" % hls_include if hls_include else
                "(no Vitis HLS: XILINX_HLS %s, and no --hls-include DIR)" % ("is %s" % vitis if vitis else "unset")))
            hints.append(GET_AP_TYPES)
    deps = Path(finn_deps or env.get("FINN_DEPS") or _finn_default_deps()).resolve()
    if not _has(deps / "finn-hlslib", "bnn-library.h", "mvau.hpp"):
        missing.append("finn-hlslib in %s (FINN_DEPS)" % deps)
        hints.append(GET_HLSLIB)
    if shutil.which("g++") is None:
        missing.append("g++ on PATH")
        hints.append("install g++ (>= 12)")
    if missing:
        raise CppSimError("cppsim: missing %s; to get them: %s" % ("; ".join(missing), "; ".join(hints)))
    return Headers(ap_include=ap_include, finn_deps=str(deps), vitis=is_vitis)


def _finn_version() -> str:
    return str(package_versions("finn-plus")["finn-plus"])


def _has(folder: Path, *names: str) -> bool:
    return all((folder / n).is_file() for n in names)


def _finn_default_deps() -> str:
    from finn.interface.settings import FINN_ROOT

    return str(FINN_ROOT / "finn_deps")


def stage_toolchain(headers: Headers, work: Path) -> Dict[str, str]:
    """Environment for FINN's compile line; without Vitis, writes the stand-in XILINX_HLS under ``work``.

    FINN adds ``-I$XILINX_HLS/include`` and ``-I{finn_deps}/finn-hlslib``; the open ap_types folder
    comes in through g++'s CPATH (searched after the -I folders), so nothing is copied out of it.
    """
    from finn.util.settings import get_settings

    env = {"FINN_DEPS": headers.finn_deps, "FINN_CUSTOM_HLS": str(get_settings().finn_custom_hls)}
    if headers.vitis:
        env["XILINX_HLS"] = str(Path(headers.ap_include).parent)
        return env
    hls = work / "hls"
    (hls / "include").mkdir(parents=True, exist_ok=True)
    for name, text in STANDIN_HEADERS.items():
        _write_if_changed(hls / "include" / name, text.encode())
    for rel in LINK_ARCHIVES:
        (hls / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(hls / rel, EMPTY_ARCHIVE)
    env["XILINX_HLS"] = str(hls)
    env["CPATH"] = headers.ap_include
    return env


def _write_if_changed(path: Path, data: bytes) -> None:
    # Unchanged stand-ins keep their mtime, so the compile cache's fingerprint stays valid.
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def toolchain_env(env: Dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def toolchain_fingerprint(env: Dict[str, str]) -> str:
    """What besides the generated sources decides a compiled layer: g++, FINN, and every header file
    (path, size, mtime) FINN's compile line can see."""
    from finn.templates import get_templates_folder

    h = hashlib.sha256()
    gxx = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout.splitlines()
    h.update(("%s|%s|%s" % (gxx[0] if gxx else "", _finn_version(), sorted(env.items()))).encode())
    folders = [Path(env["XILINX_HLS"]) / "include", Path(env["FINN_DEPS"]) / "finn-hlslib",
               Path(get_templates_folder()) / "npy2stream", Path(env["FINN_CUSTOM_HLS"])]
    if env.get("CPATH"):
        folders.append(Path(env["CPATH"]))
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(("%s|%d|%d\n" % (p, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


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

    h = hashlib.sha256(str(_finn_version()).encode() + node.SerializeToString())
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
    from build_fpga.finn_env import finn_session

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
