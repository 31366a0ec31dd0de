"""A fake PYNQ board for the pynq backend's tests, and the small bundles the host tests load.

``FakeBoard`` stands in for the ``pynq`` package (``board.module()`` goes into ``sys.modules``).
It models what the real protocol depends on, so the backend cannot pass by accident:

- ``allocate`` returns ndarray subclasses with a ``device_address``; the "DRAM" the hardware
  sees is separate from the array the CPU writes: ``flush()`` copies CPU -> DRAM,
  ``invalidate()`` DRAM -> CPU. A missing flush feeds the hardware stale bytes, a missing
  invalidate returns stale features.
- ``Overlay`` parses the .hwh of FINN's block design around the board's DMAs and memories
  (``board_hwh``, the same design ``make_bundle`` writes next to the bitfile; or, with
  ``FakeBoard.from_finn_build``, the bundle's own .hwh and FINN's driver files from a hardware
  build) with the real PYNQ parser (``pynq_twin``), so its ``ip_dict`` names IPs as PYNQ does, and exposes the DMAs
  with registers 0x00 (control: write 1 to start; read: 0x2 done, clear-on-read like HLS's
  ap_done, 0x4 idle), 0x10/0x14 (address) and 0x1C (count).
- Starting the input DMA "runs the hardware": it unpacks the input DRAM bytes with FINN's
  layout, runs the emulator and packs the features into the output buffer's DRAM, then sets
  done -- but only if the external weight DMAs (with the right bytes) and the output DMA were
  started first with matching counts. Otherwise it records a protocol error and never
  completes, as a real accelerator would stall. ``hang=True`` never completes at all.
- The buffers come from a contiguous memory (CMA) pool of ``cma_bytes`` (PYNQ's images: 128 MB),
  as XRT's zocl driver takes them on PYNQ 2.7 and 3.1: an allocation beyond what is free raises
  PYNQ 3.1's RuntimeError; ``meminfo()`` is the pool as /proc/meminfo reports it.
- Runtime-writeable weight memories (``runtime=``) are AXI-lite windows at the addresses the
  design's address map gives them, reached word by word through ``MMIO`` on one bus (``bus``,
  physical address -> word, the twin of /dev/mem). A run stalls unless every window holds its
  expected words, and the first run after a window was written computes with the stale,
  prefetched weights (wrong features), as FINN's weight streamers do until flushed.
"""

import collections
import copy
import importlib.machinery
import itertools
import json
import os
import sys
import types
from xml.etree import ElementTree

import numpy as np

from bnn_transfer.host.atomic import write_bytes_atomic
from bnn_transfer.host.emulator import load_emulator, save_emulator
from bnn_transfer.host.manifest import finalize_manifest, new_manifest
from bnn_transfer.host.packing import pack, packed_shape, unpack

# Its sibling helpers, whichever way this file was imported (tests.host.fake_pynq, fake_pynq from a
# notebook kernel's fake pynq module)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finn_hwh  # noqa: E402
import pynq_twin  # noqa: E402

DONE, IDLE = 0x2, 0x4
PYNQ_CMA_BYTES = 128 << 20  # CONFIG_CMA_SIZE_MBYTES=128 in PYNQ's kernel configuration
# Whose ip_dict a FakeBoard's overlay gets: PYNQ 3.x/4.0's where .ci/install put the real pynq, else
# hwh_names (PYNQ 2.7's naming)
DEFAULT_PARSER = None if pynq_twin.missing("pynq-4.0.0-pynqmetadata") else "pynq-4.0.0-pynqmetadata"

# ----------------------------------------------------------------------------- test bundles

INPUT_SIZE = 8
FEATURE_WIDTH = 12
BACKBONE_DIGEST = "ab" * 32
DELETE = object()  # a make_bundle field value that removes the field from the manifest


def tiny_network(seed=0):
    """An emulator network on 8x8 RGB images: conv3x3 (4 ch) + pool 2 -> fc 12 features."""
    rng = np.random.default_rng(seed)
    w1 = rng.choice([-1, 1], size=(4, 3 * 3 * 3)).astype(np.int8)
    t1 = rng.integers(-150, 150, size=4)
    w2 = rng.choice([-1, 1], size=(FEATURE_WIDTH, 4 * 4 * 4)).astype(np.int8)
    t2 = rng.integers(-4, 5, size=FEATURE_WIDTH)
    spec = {"input": {"shape": [INPUT_SIZE, INPUT_SIZE, 3], "datatype": "UINT8"}, "layers": [
        {"name": "conv1", "kind": "conv", "kernel": 3, "stride": 1, "padding": 1, "pad_value": 0.0,
         "pool": [2, 2], "in_shape": [8, 8, 3], "out_shape": [4, 4, 4]},
        {"name": "fc1", "kind": "fc", "kernel": None, "stride": 1, "padding": 0, "pad_value": 0.0,
         "pool": None, "in_shape": [64], "out_shape": [FEATURE_WIDTH]},
    ]}
    return spec, [w1, w2], [t1, t2]


def tiny_io(odt="BIPOLAR"):
    """FINN's io dict for ``tiny_network``: SIMD 3 input, PE 6 output (so the words are padded)."""
    ifolded = [1, INPUT_SIZE, INPUT_SIZE, 1, 3]
    ofolded = [1, 2, 6]
    return {
        "idt": ["DataType['UINT8']"], "odt": [odt],
        "ishape_normal": [[1, INPUT_SIZE, INPUT_SIZE, 3]], "ishape_folded": [ifolded],
        "ishape_packed": [list(packed_shape(ifolded, "UINT8"))],
        "oshape_normal": [[1, FEATURE_WIDTH]], "oshape_folded": [ofolded],
        "oshape_packed": [list(packed_shape(ofolded, odt))],
        "input_dma_name": ["idma0"], "output_dma_name": ["odma0"],
        "number_of_external_weights": 0,
    }


def colour_network(pool=4, width=128, seed=0):
    """A backbone whose features carry colour: 1x1 conv colour detectors, max pool, random +-1 projection.

    The detectors threshold channel sums (brightness) and differences (red vs the rest, yellow,
    magenta, ...); synthetic-transfer's classes differ in colour scheme, so a head on these
    features beats chance clearly, unlike one on a random network.
    """
    det = [((1, 1, 1), t) for t in (150, 300, 450, 600)]
    for w in ((1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        det += [(w, t) for t in (-120, -60, 0, 40, 80)]
    for w in ((1, 1, -1), (1, -1, 1), (-1, 1, 1)):
        det += [(w, t) for t in (100, 200, 300, 400)]
    k, side = len(det), INPUT_SIZE // pool
    rng = np.random.default_rng(seed)
    spec = {"input": {"shape": [INPUT_SIZE, INPUT_SIZE, 3], "datatype": "UINT8"}, "layers": [
        {"name": "colour", "kind": "conv", "kernel": 1, "stride": 1, "padding": 0, "pad_value": 0.0,
         "pool": [pool, pool], "in_shape": [INPUT_SIZE, INPUT_SIZE, 3], "out_shape": [side, side, k]},
        {"name": "fc", "kind": "fc", "kernel": None, "stride": 1, "padding": 0, "pad_value": 0.0, "pool": None,
         "in_shape": [side * side * k], "out_shape": [width]}]}
    weights = [np.array([d[0] for d in det], np.int8),
               rng.choice([-1, 1], size=(width, side * side * k)).astype(np.int8)]
    thresholds = [np.array([d[1] for d in det], np.int64), rng.integers(-6, 7, size=width)]
    io = tiny_io()
    folded = [1, width // 4, 4]
    io.update(oshape_normal=[[1, width]], oshape_folded=[folded], oshape_packed=[list(packed_shape(folded, "BIPOLAR"))])
    return (spec, weights, thresholds), io, width


def make_bundle(root, board="pynq-z2", with_bitfile=True, onnx_file=None, network=None, external_weights=(),
                io=None, runtime_weights=(), hwh_text=None, **fields):
    """Write a valid deploy bundle into ``root`` (a directory that need not exist) and return it.

    ``network`` is ``(spec, weights, thresholds)`` (default ``tiny_network()``); ``onnx_file``
    is a QONNX graph to copy in; ``external_weights`` are ``(dma, uint8 array, repeats)``;
    ``runtime_weights`` ``(ip, uint32 words)``, written as FINN's .dat files; ``hwh_text`` is the text
    of the .hwh next to the bitfile (default: ``board_hwh``'s design for the bundle's DMAs and
    memories); ``board`` and ``fields`` override manifest fields (``DELETE`` removes one).
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    spec, ws, ts = network or tiny_network()
    save_emulator(os.path.join(root, "emulator.npz"), spec, ws, ts)
    io = dict(io or tiny_io())
    m = new_manifest("build_fpga", "bundle", params={"preset": "tiny"}, part="xc7z020clg400-1",
                     clock_mhz=100.0, preset="tiny", preprocess={"input_size": INPUT_SIZE, "resize_longest": 9},
                     feature_width=FEATURE_WIDTH, backbone_digest=BACKBONE_DIGEST, emulator="emulator.npz",
                     bitfile=None, hwh=None, onnx=None, io=io)
    if onnx_file is not None:  # where build_fpga puts it: pc/, which the copy on a board leaves out
        os.makedirs(os.path.join(root, "pc"), exist_ok=True)
        with open(onnx_file, "rb") as f:
            write_bytes_atomic(os.path.join(root, "pc", "backbone.onnx"), f.read())
        m["onnx"] = "pc/backbone.onnx"
    entries = []
    for dma, data, repeats in external_weights:
        rel = "runtime_weights/%s.npy" % dma
        os.makedirs(os.path.join(root, "runtime_weights"), exist_ok=True)
        np.save(os.path.join(root, rel), np.asarray(data, dtype=np.uint8))
        entries.append({"dma": dma, "file": rel, "repeats": repeats})
    if entries:
        io.update(number_of_external_weights=len(entries), external_weights=entries)
    rt = []
    for k, (ip, words) in enumerate(runtime_weights):
        rel = "driver/runtime_weights/1_%d_MVAU_hls_%d.dat" % (k, k)
        write_bytes_atomic(os.path.join(root, rel), "".join("%08x\n" % w for w in words).encode())
        rt.append({"ip": ip, "file": rel, "layer": "fc%d" % k})
    if rt:
        io["runtime_writeable_weights"] = rt
    if with_bitfile:
        if hwh_text is None:  # io may be malformed on purpose, or spell the DMAs as finn-plus does
            dmas = [d for key in ("input_dma_name", "output_dma_name", "idma_names", "odma_names")
                    for d in io.get(key) or []] + [e["dma"] for e in entries]
            hwh_text, _ = board_hwh(zynq_of(fields.get("part", m["part"])), dmas,
                                    {ip: 4 * len(words) for ip, words in runtime_weights})
        write_bytes_atomic(os.path.join(root, "bitfile", "finn-accel.bit"), b"fake bitstream")
        write_bytes_atomic(os.path.join(root, "bitfile", "finn-accel.hwh"), hwh_text.encode())
        m.update(bitfile="bitfile/finn-accel.bit", hwh="bitfile/finn-accel.hwh")
    for key, value in dict(fields, board=board).items():
        if value is DELETE:
            m.pop(key, None)
        else:
            m[key] = value
    finalize_manifest(root, m, "manifest.json")
    return root


# ----------------------------------------------------------------------------- the design's .hwh


def zynq_of(part):
    """FINN's Zynq family of a part: Zynq-7000 parts are xc7z*, the other PYNQ boards UltraScale+."""
    return "zynq_7000" if part.startswith("xc7z") else "zynq_us+"


def board_hwh(zynq, dmas, runtime_bytes):
    """The .hwh of FINN's block design for a bundle, and its windows {"<instance>/<interface>": (base, size)}.

    ``dmas`` are the IODMA instances (idma<k>, odma<k>); ``runtime_bytes`` maps each runtime-writeable
    memory ("<partition>/s_axilite_<j>", j = 0, 1, ... in each partition) to its size in bytes. In
    graph order: the input and weight DMAs, a compute partition without AXI-lite (every FINN design
    has one), the partitions of the runtime memories, the output DMAs.
    """
    memories = {}
    for ip, nbytes in runtime_bytes.items():
        name, _, port = ip.rpartition("/")
        memories.setdefault(name, {})[int(port[len("s_axilite_"):])] = nbytes
    indices = {int(name.rsplit("_", 1)[1]) for name in memories}
    free = (k for k in itertools.count() if k not in indices)
    inputs = sorted(d for d in dmas if not d.startswith("odma"))
    cores = [finn_hwh.iodma(d, "StreamingDataflowPartition_%d" % next(free)) for d in inputs]
    cores.append(finn_hwh.partition("StreamingDataflowPartition_%d" % next(free), []))
    for name in sorted(memories, key=lambda n: int(n.rsplit("_", 1)[1])):
        cores.append(finn_hwh.partition(name, [memories[name][j] for j in range(len(memories[name]))]))
    cores += [finn_hwh.iodma(d, "StreamingDataflowPartition_%d" % next(free)) for d in sorted(set(dmas) - set(inputs))]
    text, windows = finn_hwh.finn_hwh(cores, zynq)
    return text, {"%s/%s" % key: w for key, w in windows.items()}


def hwh_design(text):
    """What a Vivado .hwh says of FINN's design: its AXI-lite windows {"<instance>/<interface>": (base, size)}
    (the PS's REGISTER memory ranges) and its DMAs (the modules whose m_axi_gmem0 maps DDR)."""
    windows, dmas = {}, []
    for module in ElementTree.fromstring(text.encode("utf-8")).iter("MODULE"):
        for r in module.iter("MEMRANGE"):
            if r.get("MEMTYPE") == "REGISTER":
                base, high = int(r.get("BASEVALUE"), 16), int(r.get("HIGHVALUE"), 16)
                windows["%s/%s" % (r.get("INSTANCE"), r.get("SLAVEBUSINTERFACE"))] = (base, high - base + 1)
            elif r.get("MASTERBUSINTERFACE") == "m_axi_gmem0" and module.get("INSTANCE") not in dmas:
                dmas.append(module.get("INSTANCE"))
    return windows, dmas


def hwh_names(windows):
    """The ip_dict PYNQ's HWH parser makes of ``board_hwh``'s windows, for machines without the real pynq
    (``test_pynq_twin`` holds it to the real parsers): a core with one AXI-lite window under its own
    name, a core with more under ``<core>/<interface>`` each, and the PS."""
    cores = collections.Counter(name.split("/")[0] for name in windows)
    out = {"zynq_ps": {}}
    for name, (base, size) in windows.items():
        core, port = name.split("/")
        out[core if cores[core] == 1 else name] = {"phys_addr": base, "addr_range": size, "mem_id": port}
    return out


# ----------------------------------------------------------------------------- fake pynq


class FakeBuffer(np.ndarray):
    """What ``pynq.allocate`` returns: an ndarray with a physical address and cache control."""

    def __array_finalize__(self, obj):
        self.board = getattr(obj, "board", None)
        self.device_address = getattr(obj, "device_address", None)

    def flush(self):
        self.board.flushes += 1
        self.board.dram[self.device_address][...] = np.asarray(self).reshape(-1).view(np.uint8)

    def invalidate(self):
        self.board.invalidates += 1
        np.asarray(self).reshape(-1).view(np.uint8)[...] = self.board.dram[self.device_address]

    def freebuffer(self):
        self.board.freed.append(self.device_address)
        self.board.cma_used -= self.board.dram.pop(self.device_address).size


class FakeDMA:
    """An IODMA's AXI-lite registers; ``role`` is "input", "output" or "weights"."""

    def __init__(self, board, name, role):
        self.board, self.name, self.role = board, name, role
        self.regs = {0x10: 0, 0x14: 0, 0x1C: 0}
        self.status = IDLE
        self.armed = False  # started and waiting for the run

    def read(self, offset):
        if offset != 0x00:
            return self.regs[offset]
        status = self.status
        self.status &= ~DONE  # ap_done is clear-on-read
        return status

    def write(self, offset, value):
        if offset not in (0x00, 0x10, 0x14, 0x1C):
            raise AssertionError("%s: write to unknown register 0x%x" % (self.name, offset))
        if offset != 0x00:
            self.regs[offset] = int(value)
            return
        if not value & 1:
            return
        if self.armed:
            self.board.errors.append("%s started while already running" % self.name)
            return
        self.armed = True
        self.status = 0  # busy: neither done nor idle
        self.board.log.append((self.name, self.regs[0x1C]))
        self.board.pending.append(self.name)
        if self.role == "input":
            self.board.run(self)

    @property
    def address(self):
        return self.regs[0x10] | (self.regs[0x14] << 32)


class FakeMem:
    """A runtime-writeable weight memory: its AXI-lite window on the bus and the words it must hold."""

    def __init__(self, name, words):
        self.name, self.expected = name, np.asarray(words, np.uint32)
        self.base = self.size = None  # where the design's address map puts it, set with the overlay


class FakeMMIO:
    """``pynq.MMIO(base_addr, length)`` on the board's bus: 32-bit words by physical address.

    Checks what the real one does (non-negative base, aligned offsets inside the mapping, an int
    for ``write``: pynq's ``write_mm`` refuses numpy integers); a write outside every runtime
    weight window is a protocol error, as it would hang or corrupt a real board's bus.
    """

    def __init__(self, board, base_addr, length=4):
        if base_addr < 0 or length < 0:
            raise ValueError("Base address or length cannot be negative.")
        self.board, self.base_addr, self.length = board, base_addr, length

    def _address(self, offset, access):
        if offset < 0:
            raise ValueError("Offset cannot be negative.")
        if offset % 4:
            raise MemoryError("Unaligned %s: offset must be multiple of 4." % access)
        if offset + 4 > self.length:
            raise IndexError("offset 0x%x outside the mapped 0x%x bytes" % (offset, self.length))
        return self.base_addr + offset

    def write(self, offset, data):
        if type(data) is not int:  # pynq takes bytes too; the backend writes words
            raise ValueError("Data type must be int or bytes.")
        address = self._address(offset, "write")
        if not any(m.base <= address < m.base + m.size for m in self.board.mems.values()):
            self.board.errors.append("MMIO write to 0x%x, outside every runtime weight window" % address)
            return
        self.board.bus[address] = int(np.uint32(data))
        self.board.bus_log.append(("write", address))
        self.board.stale = True

    def read(self, offset=0):
        address = self._address(offset, "read")
        self.board.bus_log.append(("read", address))
        return self.board.bus.get(address, 0)


class FakeOverlay:
    """``pynq.Overlay``: the ``ip_dict`` PYNQ makes of the design's .hwh, and a driver per DMA it names."""

    def __init__(self, board, bitfile, download=True):
        if not os.path.isfile(bitfile):
            raise OSError("bitfile %s not found" % bitfile)
        self.board = board
        board.overlays.append(bitfile)
        self.ip_dict = board.ip_dict()
        for name, ip in board.dmas.items():
            if name in self.ip_dict:
                setattr(self, name, ip)


class FakeBoard:
    """The fake hardware behind the fake ``pynq`` module; see the module docstring.

    ``weights`` maps an external-weight DMA name to ``(expected bytes, repeats)``, ``runtime`` a
    runtime-writeable memory (the manifest's ``<partition>/s_axilite_<j>``) to its expected uint32
    words, ``windows`` such a memory to the size of its AXI-lite window in bytes when it should
    not be the words' (a bitfile that does not match its bundle). ``parser`` names the PYNQ whose
    ip_dict the overlay gets (``pynq_twin.PARSERS``), None for ``hwh_names``. Counters and logs for
    the tests: ``allocations`` (shapes), ``freed``, ``flushes``, ``invalidates``, ``log`` ((dma,
    count) per start), ``runs`` (images per completed run), ``errors``, ``bus_log``, ``hwh_parsed``,
    ``cma_used`` and ``cma_peak`` (bytes of the CMA pool). ``design`` is the text of the .hwh the board's
    bitstream came with (default: ``board_hwh``'s for the DMAs and memories above), ``io`` the io dict of
    the DMAs' names and shapes (default: the bundle manifest's).
    """

    def __init__(self, bundle, hang=False, weights=None, runtime=None, windows=None, parser=DEFAULT_PARSER,
                 cma_bytes=PYNQ_CMA_BYTES, design=None, io=None):
        io = io or bundle.io
        self.emulator = load_emulator(bundle.emulator_path)
        self.idt, self.odt = io["idt"][0], io["odt"][0]
        self.ishape_folded = io["ishape_folded"][0][1:]
        self.ishape_packed = io["ishape_packed"][0][1:]
        self.oshape_folded = io["oshape_folded"][0][1:]
        self.oshape_packed = io["oshape_packed"][0][1:]
        self.input_shape = tuple(io["ishape_normal"][0][1:])
        self.hang = hang
        self.weights = dict(weights or {})
        # the manifest's names, or FINN's driver's (idma_names/odma_names in its settings.json)
        self.idma = FakeDMA(self, (io.get("input_dma_name") or io["idma_names"])[0], "input")
        self.odma = FakeDMA(self, (io.get("output_dma_name") or io["odma_names"])[0], "output")
        self.design = design
        self.dmas = {self.idma.name: self.idma, self.odma.name: self.odma}
        for name in self.weights:
            self.dmas[name] = FakeDMA(self, name, "weights")
        self.mems = {name: FakeMem(name, words) for name, words in (runtime or {}).items()}
        self.windows = dict(windows or {})
        self.parser = parser
        self.zynq = zynq_of(bundle.part)
        self.bus = {}  # physical address -> 32-bit word: what /dev/mem reaches over AXI-lite
        self.bus_log = []  # ("write" or "read", address) per MMIO access, in order
        self.hwh_parsed = []  # the .hwh files the backend had pynq's HWH parser read
        self.stale = False
        self.dram = {}
        self.next_address = 0x1_2000_0000  # above 4 GiB, so the high address word matters
        self.cma_bytes, self.cma_used, self.cma_peak = cma_bytes, 0, 0
        self.allocations, self.freed, self.overlays = [], [], []
        self.flushes = self.invalidates = 0
        self.log, self.runs, self.errors = [], [], []
        self.pending = []  # DMAs started since the last completed run, in order

    @classmethod
    def from_finn_build(cls, bundle, **kwargs):
        """The board running the bundle's bitstream as FINN built it, nothing taken from our manifest: the
        design is the bundle's .hwh (what Vivado wrote for FINN's block design), the input and output DMAs
        and the weights each weight DMA must stream are FINN's driver's (``driver/settings.json``,
        ``driver/runtime_weights/<dma>.npy``, repeated H*W times per image for an NHWC shape)."""
        driver = os.path.join(bundle.root, "driver")
        with open(os.path.join(driver, "settings.json"), encoding="utf-8") as f:
            io = json.load(f)["driver_information"]["io_shape_dict"]
        weights = {}
        for dma, shape in (io.get("external_weights_input_shapes") or {}).items():
            data = np.asarray(np.load(os.path.join(driver, "runtime_weights", dma + ".npy")), np.uint8).reshape(-1)
            weights[dma] = (data, int(np.prod(shape[1:-1])) if len(shape) == 4 else 1)
        with open(bundle.hwh_path, encoding="utf-8") as f:
            design = f.read()
        return cls(bundle, weights=weights, design=design, io=io, **kwargs)

    def module(self):
        mod = types.ModuleType("pynq")
        # a spec, so that importlib.util.find_spec("pynq") sees an importable package
        mod.__spec__ = importlib.machinery.ModuleSpec("pynq", None)
        mod.Overlay = lambda bitfile, download=True, **kw: FakeOverlay(self, bitfile, download)
        mod.allocate = lambda *args, **kwargs: self.allocate(*args, **kwargs)
        mod.MMIO = lambda base_addr, length=4, **kw: FakeMMIO(self, base_addr, length)
        mod.pl_server = types.SimpleNamespace(hwh_parser=types.SimpleNamespace(HWH=self._hwh))
        return mod

    def hwh(self):
        """The .hwh of the design this board runs (``design``, else ``board_hwh``'s for its DMAs and
        memories), and its windows; places the memories on the bus."""
        if self.design is not None:
            text, (windows, dmas) = self.design, hwh_design(self.design)
            missing = sorted(set(self.dmas) - set(dmas))
            if missing:
                raise ValueError("the design has no DMA %s (it has %s)" % (", ".join(missing), ", ".join(dmas)))
        else:
            sizes = {name: self.windows.get(name, 4 * mem.expected.size) for name, mem in self.mems.items()}
            text, windows = board_hwh(self.zynq, list(self.dmas), sizes)
        for name, mem in self.mems.items():
            mem.base, mem.size = windows[name]
        return text, windows

    def ip_dict(self):
        """The overlay's ip_dict: the design's .hwh through the board's PYNQ parser."""
        text, windows = self.hwh()
        return copy.deepcopy(pynq_twin.parse(text, self.parser)) if self.parser else hwh_names(windows)

    def _hwh(self, hwh_name):
        """``pynq.pl_server.hwh_parser.HWH``: the real parser of the same pynq, on the file it is given."""
        self.hwh_parsed.append(hwh_name)
        with open(hwh_name, encoding="utf-8") as f:
            text = f.read()
        if self.parser:
            ip_dict = copy.deepcopy(pynq_twin.parse(text, pynq_twin.hwh_parser(self.parser)))
        else:
            design, windows = self.hwh()
            if text != design:
                raise ValueError("without the real pynq the fake reads no .hwh but its own design's")
            ip_dict = hwh_names(windows)
        return types.SimpleNamespace(ip_dict=ip_dict)

    def meminfo(self):
        """The CMA lines of the board's /proc/meminfo (kB, as the kernel writes them)."""
        return "MemTotal:         505664 kB\nCmaTotal:       %8d kB\nCmaFree:        %8d kB\n" % (
            self.cma_bytes // 1024, (self.cma_bytes - self.cma_used) // 1024)

    def allocate(self, shape, dtype=np.uint8, **kwargs):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.cma_used + nbytes > self.cma_bytes:  # PYNQ 3.1's XrtDevice.allocate_bo
            raise RuntimeError("BO allocation failed: [Errno 12] Cannot allocate memory")
        self.cma_used += nbytes
        self.cma_peak = max(self.cma_peak, self.cma_used)
        buf = np.zeros(shape, dtype).view(FakeBuffer)
        buf.board, buf.device_address = self, self.next_address
        self.dram[buf.device_address] = np.full(buf.nbytes, 0xEE, np.uint8)  # DRAM is never zeroed
        self.next_address += (buf.nbytes + 4095) // 4096 * 4096
        self.allocations.append(tuple(shape))
        return buf

    def _memory(self, address, nbytes, who):
        mem = self.dram.get(address)
        if mem is None or mem.size < nbytes:
            self.errors.append("%s: no buffer of %d bytes at 0x%x" % (who, nbytes, address))
            return None
        return mem

    def run(self, idma):
        """The input DMA was started: check the protocol, then compute like the accelerator."""
        n = idma.regs[0x1C]
        order = self.pending
        if self.odma.name not in order:
            self.errors.append("input DMA started before the output DMA")
        elif self.odma.regs[0x1C] != n:
            self.errors.append("output DMA count %d != input DMA count %d" % (self.odma.regs[0x1C], n))
        for name, (data, repeats) in self.weights.items():
            dma = self.dmas[name]
            if name not in order or (self.odma.name in order and order.index(name) > order.index(self.odma.name)):
                self.errors.append("weights DMA %s not started before the output DMA" % name)
            elif dma.regs[0x1C] != n * repeats:
                self.errors.append("weights DMA %s count %d, expected %d" % (name, dma.regs[0x1C], n * repeats))
            else:
                mem = self._memory(dma.address, data.size, name)
                if mem is not None and not np.array_equal(mem[:data.size], data):
                    self.errors.append("weights DMA %s streams the wrong bytes" % name)
        for mem in self.mems.values():
            if [self.bus.get(mem.base + 4 * i) for i in range(mem.expected.size)] != mem.expected.tolist():
                self.errors.append("runtime weights of %s not loaded" % mem.name)
        if self.errors or self.hang:
            return  # a stalled stream: nothing ever completes
        in_bytes = n * int(np.prod(self.ishape_packed))
        out_bytes = n * int(np.prod(self.oshape_packed))
        src = self._memory(idma.address, in_bytes, idma.name)
        dst = self._memory(self.odma.address, out_bytes, self.odma.name)
        if src is None or dst is None:
            return
        images = unpack(src[:in_bytes], self.idt, [n] + self.ishape_folded).reshape((n,) + self.input_shape)
        feats = self.emulator.extract(images)
        if self.stale:  # computed with the weights the streamers had prefetched before the write
            feats = -feats
            self.stale = False
        if self.odt == "BINARY":
            feats = (feats > 0).astype(np.uint8)
        dst[:out_bytes] = pack(feats.reshape([n] + self.oshape_folded), self.odt).reshape(-1)
        for dma in self.dmas.values():
            dma.armed = False
            dma.status = DONE | IDLE
        self.pending = []
        self.runs.append(n)
