"""The headers and tools FINN's C++ simulation compiles with, found or stood in without a Xilinx install.

:func:`find_headers` looks in this order: ``$XILINX_HLS/include`` when Vitis HLS is installed (then
nothing is stood in); otherwise an open ap_types directory (``--hls-include DIR``, e.g. the
``include/`` of github.com/Xilinx/HLS_arbitrary_Precision_Types). finn-hlslib always comes from
FINN's deps folder (``FINN_DEPS``, filled by ``finn deps update``). Without Vitis,
:func:`stage_toolchain` writes into the build directory a stand-in ``XILINX_HLS`` with the
Vitis-only headers no open set has (``hls_vector.h``, ``ap_axi_sdata.h``, the ``half`` type) and
empty archives for the float libraries FINN's link line names (binary layers use no float): never
into the user's tree. build_fpga/cppsim.py compiles and runs the layers with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import package_versions

# Vitis-only declarations that finn-hlslib and FINN's npy stream templates include. Only what the
# compiled layers instantiate has to be right: hls::vector as an array, qdma_axis as a data/keep/last
# record, half as the compiler's 16-bit float (g++ >= 12). They sit in the stand-in
# $XILINX_HLS/include, searched before the open headers (CPATH), so ap_int.h can wrap the open one.
STANDIN_HEADERS = {
    "ap_int.h": """\
// Stand-in wrapper, written by bnn-transfer's build_fpga/hls_toolchain.py for FINN's C++ simulation only:
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
// build_fpga/hls_toolchain.py for FINN's C++ simulation only. With Vitis HLS installed it is not used.
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
// build_fpga/hls_toolchain.py for FINN's C++ simulation only. With Vitis HLS installed it is not used.
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


class CppSimError(BnnError):
    pass


@dataclass(frozen=True)
class Headers:
    """Where FINN's cppsim compile line finds its headers (see the module docstring)."""

    ap_include: str  # folder holding ap_int.h and hls_stream.h
    finn_deps: str  # folder holding finn-hlslib/
    vitis: bool  # ap_include is $XILINX_HLS/include: no stand-ins


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


def finn_version() -> str:
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
    h.update(("%s|%s|%s" % (gxx[0] if gxx else "", finn_version(), sorted(env.items()))).encode())
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
