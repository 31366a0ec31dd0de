"""A fake PYNQ board for the pynq backend's tests, and the small bundles the host tests load.

``FakeBoard`` stands in for the ``pynq`` package (``board.module()`` goes into ``sys.modules``).
It models what the real protocol depends on, so the backend cannot pass by accident:

- ``allocate`` returns ndarray subclasses with a ``device_address``; the "DRAM" the hardware
  sees is separate from the array the CPU writes: ``flush()`` copies CPU -> DRAM,
  ``invalidate()`` DRAM -> CPU. A missing flush feeds the hardware stale bytes, a missing
  invalidate returns stale features.
- ``Overlay`` exposes the DMA IPs the bundle manifest names, with registers 0x00 (control:
  write 1 to start; read: 0x2 done, clear-on-read like HLS's ap_done, 0x4 idle), 0x10/0x14
  (address) and 0x1C (count).
- Starting the input DMA "runs the hardware": it unpacks the input DRAM bytes with FINN's
  layout, runs the emulator and packs the features into the output buffer's DRAM, then sets
  done -- but only if the external weight DMAs (with the right bytes) and the output DMA were
  started first with matching counts. Otherwise it records a protocol error and never
  completes, as a real accelerator would stall. ``hang=True`` never completes at all.
- Runtime-writeable weight memories (``runtime=``) are AXI-lite windows (``ip.mmio.array``). A run
  stalls unless every window holds its expected words, and the first run after a window was
  written computes with the stale, prefetched weights (wrong features), as FINN's weight streamers
  do until flushed.
"""

import importlib.machinery
import os
import types

import numpy as np

from host.emulator import load_emulator, save_emulator
from host.manifest import finalize_manifest, new_manifest, write_bytes_atomic
from host.packing import pack, packed_shape, unpack

DONE, IDLE = 0x2, 0x4

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
                io=None, runtime_weights=(), **fields):
    """Write a valid deploy bundle into ``root`` (a directory that need not exist) and return it.

    ``network`` is ``(spec, weights, thresholds)`` (default ``tiny_network()``); ``onnx_file``
    is a QONNX graph to copy in; ``external_weights`` are ``(dma, uint8 array, repeats)``;
    ``runtime_weights`` ``(ip, uint32 words)``, written as FINN's .dat files;
    ``board`` and ``fields`` override manifest fields (``DELETE`` removes one).
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
    if with_bitfile:
        write_bytes_atomic(os.path.join(root, "bitfile", "finn-accel.bit"), b"fake bitstream")
        write_bytes_atomic(os.path.join(root, "bitfile", "finn-accel.hwh"), b"<fake hwh/>")
        m.update(bitfile="bitfile/finn-accel.bit", hwh="bitfile/finn-accel.hwh")
    if onnx_file is not None:
        with open(onnx_file, "rb") as f:
            write_bytes_atomic(os.path.join(root, "backbone.onnx"), f.read())
        m["onnx"] = "backbone.onnx"
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
    for key, value in dict(fields, board=board).items():
        if value is DELETE:
            m.pop(key, None)
        else:
            m[key] = value
    finalize_manifest(root, m, "manifest.json")
    return root


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
        del self.board.dram[self.device_address]


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


class FakeWindow(np.ndarray):
    """An AXI-lite memory window: writes through it mark the memory as changed since the last run."""

    def __array_finalize__(self, obj):
        self.ip = getattr(obj, "ip", None)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.ip.board.stale = True


class FakeMemIP:
    """A runtime-writeable weight memory's AXI-lite interface (``ip.mmio.array``, uint32 words)."""

    def __init__(self, board, name, words):
        self.board, self.name, self.expected = board, name, np.asarray(words, np.uint32)
        window = np.zeros(self.expected.size + 16, np.uint32).view(FakeWindow)  # windows are powers of two
        window.ip = self
        self.mmio = types.SimpleNamespace(array=window)


class _Hier:
    """A block-design hierarchy: ``overlay.StreamingDataflowPartition_1.s_axilite_0``."""


class FakeOverlay:
    def __init__(self, board, bitfile, download=True):
        if not os.path.isfile(bitfile):
            raise OSError("bitfile %s not found" % bitfile)
        self.board = board
        board.overlays.append(bitfile)
        self.ip_dict = {name: {"type": "xilinx.com:hls:iodma"} for name in board.dmas}
        self.ip_dict.update({name: {"type": "xilinx.com:user:memstream"} for name in board.mems})
        for name, ip in list(board.dmas.items()) + list(board.mems.items()):
            parent = self
            *hier, leaf = name.split("/")
            for part in hier:
                if not hasattr(parent, part):
                    setattr(parent, part, _Hier())
                parent = getattr(parent, part)
            setattr(parent, leaf, ip)


class FakeBoard:
    """The fake hardware behind the fake ``pynq`` module; see the module docstring.

    ``weights`` maps an external-weight DMA name to ``(expected bytes, repeats)``, ``runtime`` a
    runtime-writeable memory's IP name to its expected uint32 words. Counters and
    logs for the tests: ``allocations`` (shapes), ``freed``, ``flushes``, ``invalidates``,
    ``log`` ((dma, count) per start), ``runs`` (images per completed run), ``errors``.
    """

    def __init__(self, bundle, hang=False, weights=None, runtime=None):
        io = bundle.io
        self.emulator = load_emulator(bundle.emulator_path)
        self.idt, self.odt = io["idt"][0], io["odt"][0]
        self.ishape_folded = io["ishape_folded"][0][1:]
        self.ishape_packed = io["ishape_packed"][0][1:]
        self.oshape_folded = io["oshape_folded"][0][1:]
        self.oshape_packed = io["oshape_packed"][0][1:]
        self.input_shape = tuple(io["ishape_normal"][0][1:])
        self.hang = hang
        self.weights = dict(weights or {})
        self.idma = FakeDMA(self, io["input_dma_name"][0], "input")
        self.odma = FakeDMA(self, io["output_dma_name"][0], "output")
        self.dmas = {self.idma.name: self.idma, self.odma.name: self.odma}
        for name in self.weights:
            self.dmas[name] = FakeDMA(self, name, "weights")
        self.mems = {name: FakeMemIP(self, name, words) for name, words in (runtime or {}).items()}
        self.stale = False
        self.dram = {}
        self.next_address = 0x1_2000_0000  # above 4 GiB, so the high address word matters
        self.allocations, self.freed, self.overlays = [], [], []
        self.flushes = self.invalidates = 0
        self.log, self.runs, self.errors = [], [], []
        self.pending = []  # DMAs started since the last completed run, in order

    def module(self):
        mod = types.ModuleType("pynq")
        # a spec, so that importlib.util.find_spec("pynq") sees an importable package
        mod.__spec__ = importlib.machinery.ModuleSpec("pynq", None)
        mod.Overlay = lambda bitfile, download=True, **kw: FakeOverlay(self, bitfile, download)
        mod.allocate = lambda *args, **kwargs: self.allocate(*args, **kwargs)
        return mod

    def allocate(self, shape, dtype=np.uint8, **kwargs):
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
            if not np.array_equal(np.asarray(mem.mmio.array[: mem.expected.size]), mem.expected):
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
