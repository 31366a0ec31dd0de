"""PYNQ's own .hwh parsers, from the real ``pynq`` packages, for the pynq backend's tests.

An overlay's ``ip_dict`` is what PYNQ makes of the bitstream's .hwh, and PYNQ versions differ:
PYNQ 2.7's Overlay parses it with ``pynq.pl_server.hwh_parser.HWH``; PYNQ 3.x and 4.0 build full
overlays with pynqmetadata's ``RuntimeMetadataParser`` (and keep ``HWH`` for partial ones).
``.ci/install`` installs each version with ``--target`` into a folder of its own under ``.venv/``
(two pynq versions cannot share one site-packages, and pynq pins numpy<2), so the parsing runs in
a subprocess with that folder on PYTHONPATH (this file is its script) and comes back as JSON. The
same way, ``mmio_outcomes`` runs the real ``pynq.MMIO`` on a mapped array, to hold the fake's to it.
"""

import functools
import json
import os
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The interpreter of the venv the pynq folders were installed beside: their dependencies (pydantic,
# pycparser, ...) are there, not in the oldest-numpy venv that also runs the host tests (.ci/install).
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")

# parser -> (the .ci/install folder holding its pynq, how it parses)
PARSERS = {
    "pynq-2.7.0-hwh": ("pynq-2.7.0", "hwh"),
    "pynq-3.1.1-hwh": ("pynq-3.1.1", "hwh"),
    "pynq-3.1.1-pynqmetadata": ("pynq-3.1.1", "pynqmetadata"),
    "pynq-4.0.0-hwh": ("pynq-4.0.0", "hwh"),
    "pynq-4.0.0-pynqmetadata": ("pynq-4.0.0", "pynqmetadata"),
}


def folder(parser):
    return os.path.join(ROOT, ".venv", PARSERS[parser][0])


def missing(parser):
    """Why ``parser`` cannot run here, or None when it can."""
    if not os.path.isdir(folder(parser)):
        return "%s is not installed (.ci/install puts the real pynq into %s)" % (parser, folder(parser))
    if not os.path.isfile(PYTHON):
        return "%s runs with %s, which is not installed (.ci/install)" % (parser, PYTHON)
    return None


def hwh_parser(parser):
    """The parser the same pynq uses for a .hwh outside pynqmetadata: ``HWH``, the backend's fallback."""
    return parser.rsplit("-", 1)[0] + "-hwh"


def _run(parser, *args):
    env = dict(os.environ, PYTHONPATH=folder(parser))
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([PYTHON, "-W", "ignore", os.path.abspath(__file__)] + list(args), env=env,
                           capture_output=True, text=True, cwd=tmp)
    if r.returncode != 0:
        raise RuntimeError("%s %s failed: %s" % (parser, " ".join(args), r.stderr[-3000:]))
    return json.loads(r.stdout)


@functools.lru_cache(maxsize=None)
def parse(hwh_text, parser):
    """``ip_dict`` of the .hwh ``hwh_text`` as ``parser`` builds it (JSON types; odd values as repr)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "design.hwh")  # pynqmetadata picks its frontend by the extension
        with open(path, "w", encoding="utf-8") as f:
            f.write(hwh_text)
        return _run(parser, PARSERS[parser][1], path)


MMIO_CALLS = (("write", 4, 0xDEADBEEF), ("read", 4), ("write", 0, "numpy.uint32(1)"), ("write", 2, 1), ("read", 16))


def mmio_outcomes(parser):
    """What the real ``pynq.MMIO`` of ``parser``'s pynq does with ``MMIO_CALLS`` on a 16-byte window at
    0xA0000000: [["ok", result] or [exception type, message]] per call."""
    return _run(parser, "mmio")


def call_mmio(mmio_class, **kwargs):
    """``MMIO_CALLS`` on ``mmio_class(0xA0000000, 16, **kwargs)``, as ``mmio_outcomes`` reports them."""
    import numpy as np

    mmio = mmio_class(0xA0000000, 16, **kwargs)
    out = []
    for method, offset, *value in MMIO_CALLS:
        value = [np.uint32(1) if v == "numpy.uint32(1)" else v for v in value]
        try:
            out.append(["ok", getattr(mmio, method)(offset, *value)])
        except Exception as e:
            out.append([type(e).__name__, str(e)])
    return out


class _MappedDevice:
    """What pynq.MMIO asks of a PYNQ device to map a window: the mapping, here an array."""

    def has_capability(self, capability):
        return capability == "MEMORY_MAPPED"

    def mmap(self, base_addr, length):
        import numpy as np

        return np.zeros(length // 4, np.uint32)


def _main(how, path=None):
    if how == "mmio":
        import pynq

        result = call_mmio(pynq.MMIO, device=_MappedDevice())
    elif how == "pynqmetadata":
        from pynqmetadata.frontends import Metadata
        from pynqmetadata.views.runtime import RuntimeMetadataParser

        result = RuntimeMetadataParser(Metadata(input=path)).ip_dict
    else:
        from pynq.pl_server import hwh_parser

        # On a board pynq picks the class by the CPU (hwh_parser.HWH); here the design's PS stands in
        # for it, as a ZynqMP bitstream only loads on an aarch64 board.
        modtypes = {m.get("MODTYPE") for m in ElementTree.parse(path).getroot().iter("MODULE")}
        cls = hwh_parser._HWHUltrascale if "zynq_ultra_ps_e" in modtypes else hwh_parser._HWHZynq
        result = cls(hwh_name=path).ip_dict
    json.dump(result, sys.stdout, default=repr)


if __name__ == "__main__":
    _main(*sys.argv[1:])
