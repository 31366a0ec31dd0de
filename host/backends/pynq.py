"""The ``pynq`` backend: the FINN accelerator on a PYNQ board, driven through its IODMAs.

This reimplements what FINN's generated driver does on the ``zynq-iodma`` platform, so the
board needs neither that driver nor ``bitstring``; every shape, datatype and IP name comes from
the bundle manifest's io dict (see ``host.bundle``):

1. Load the overlay from the bundle's bitfile (pynq finds the .hwh next to it) and look up the
   IODMA IPs by name: ``io.input_dma_name``, ``io.output_dma_name`` and the external weights'
   DMAs. External weights are read once, straight from their .npy files into DMA buffers that
   live until ``close`` (the paper preset streams 6.8 MB of fc1/fc2 weights per image: the same
   buffers serve every batch); the weights must fit the board's contiguous memory (CMA) pool, which
   /proc/meminfo reports. Runtime-writeable weights (on-chip
   memories the bitstream cannot initialise: URAM on UltraScale+) are written once, word by word
   through ``pynq.MMIO``, into their layer's AXI-lite window and read back; then one batch of
   zeros runs and is discarded, because the layers' weight streamers had prefetched the memories'
   contents from before the write (FINN's driver flushes the same way). The manifest names each
   window ``<partition>/<interface>`` (``StreamingDataflowPartition_1/s_axilite_0``); PYNQ names
   it otherwise, so the window is looked up the way the overlay's ``ip_dict`` was built:

   - PYNQ's HWH parser (PYNQ 2.7's overlays) keys a core's windows ``<core>/<interface>`` when it
     has two or more, and the bare ``<core>`` when it has one;
   - pynqmetadata (PYNQ 3.x and 4.0) keys one entry per core, holding the window of one of its
     interfaces (``mem_id``): the others are found by parsing the bundle's .hwh, the file the
     overlay was made from, with PYNQ's HWH parser.
2. Allocate physically contiguous uint8 buffers with ``pynq.allocate``, shaped as the packed
   shapes with the batch size as first axis, and reuse them until the batch size changes.
3. Per batch: reshape the NHWC images to the folded input shape, pack them in FINN's layout
   (``host.packing`` with both reverse flags, as the driver's ``pack_input``), copy them into
   the input buffer and flush the CPU cache.
4. Program each DMA: 0x10/0x14 = the buffer's physical address (low/high 32 bits), 0x1C = the
   number of images (times ``repeats`` for external weights), then write 1 to 0x00. External
   weight DMAs start first, then the output DMA, then the input DMA: the output DMA must be
   ready to drain the stream before data flows in.
5. Poll the output DMA's 0x00 until bit 0x2 (done), against a deadline: a hung accelerator
   raises BnnError instead of blocking forever.
6. Invalidate the output buffer, unpack it (``unpack_output``'s layout) to the folded output
   shape, reshape to (N, D) and map the bits to +-1.

``pynq`` is imported when the backend is made, never at module import: this module loads on
any machine, and the tests drive it with a fake ``pynq``.
"""

import sys
import time

import numpy as np

from ..errors import BnnError
from ..inputs import regular_file
from ..npzfile import npy_header
from ..packing import pack, unpack
from .base import Backend

# The control registers of FINN's IODMA (an HLS block with ap_ctrl_hs): the buffer address is a
# 64-bit argument split over 0x10/0x14, which is why the image count sits at 0x1C.
REG_CTRL = 0x00
REG_ADDR_LO = 0x10
REG_ADDR_HI = 0x14
REG_COUNT = 0x1C
CTRL_START = 0x1
CTRL_DONE = 0x2
CTRL_IDLE = 0x4

# pynq.allocate takes DMA buffers from the kernel's contiguous memory (CMA) pool, through XRT's zocl
# driver on PYNQ 2.7 and 3.1: 128 MB on every PYNQ image (CONFIG_CMA_SIZE_MBYTES=128 in PYNQ's kernel
# configuration, sdbuild/boot/meta-pynq/recipes-kernel/linux/linux-xlnx/pynq.cfg), shared with other
# overlays' buffers. The kernel reports the pool's size and what is free in /proc/meminfo.
MEMINFO = "/proc/meminfo"
PYNQ_CMA_MB = 128
_CMA_REMEDY = "other programs hold DMA buffers (a notebook with an overlay loaded: shut its kernel down), or reboot"


def _import_pynq():
    try:
        import pynq
    except ImportError:
        # on a board, mostly a shell outside PYNQ's environment (plain sudo resets PATH to the system Python)
        raise BnnError("pynq backend: %s cannot import the pynq package; on a PYNQ board run as root in PYNQ's "
                       "Python, as its Jupyter does ('sudo -i', or 'source /etc/profile.d/pynq_venv.sh' as root); "
                       "--backend emulator computes the same features in numpy, without the FPGA"
                       % sys.executable) from None
    except Exception as e:  # pynq probes the hardware on import and fails in many ways elsewhere
        raise BnnError("pynq backend: cannot import pynq (%s: %s)" % (type(e).__name__, e)) from None
    return pynq


def _seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise BnnError("pynq backend: %s must be a non-negative number of seconds, got %r" % (name, value))
    return float(value)


def read_runtime_words(path):
    """FINN's ``decoupled_runtime`` weight file: one 32-bit word per line in hex, as uint32."""
    try:
        with open(regular_file(path), encoding="ascii") as f:
            text = f.read()
        words = np.array([int(w, 16) for w in text.split()], dtype=np.uint64)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BnnError("%s: not a FINN runtime weight file (one 32-bit hex word per line): %s" % (path, e)) from None
    if words.size == 0 or (words >> 32).any():
        raise BnnError("%s: not a FINN runtime weight file (empty, or a word wider than 32 bits)" % path)
    return words.astype(np.uint32)


def cma_pool():
    """(total, free) bytes of the kernel's CMA pool as ``/proc/meminfo`` gives them, or None where it has none."""
    fields = {}
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("CmaTotal", "CmaFree"):
                    fields[key] = int(value.split()[0]) * 1024  # kB
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        return None
    if len(fields) != 2 or fields["CmaTotal"] == 0:
        return None
    return fields["CmaTotal"], fields["CmaFree"]


def _mb(nbytes):
    return "%.1f MB" % (nbytes / 1e6)


def _npy_layout(path):
    """(shape, data offset) of a .npy file of uint8 bytes, from its header alone."""
    try:
        with open(regular_file(path), "rb") as f:
            shape, fortran, dtype, offset = npy_header(f)
    except Exception as e:  # missing, or not a .npy file (the bundle hash guards against tampering)
        raise BnnError("%s: cannot read external weights (%s)" % (path, e)) from None
    if dtype != np.uint8 or int(np.prod(shape)) == 0 or (fortran and len(shape) > 1):
        raise BnnError("%s: external weights must be non-empty packed uint8 bytes, got %s %r" % (path, dtype, shape))
    return tuple(shape), offset


def _window_entry(ip_dict, partition, port):
    """The ip_dict entry of the AXI-lite window ``port`` of the core ``partition``, or None."""
    entry = ip_dict.get(partition + "/" + port)
    if entry is None:
        entry = ip_dict.get(partition)
        if not isinstance(entry, dict) or entry.get("mem_id") != port:
            return None
    return entry


def _free(buf):
    # PynqBuffer.freebuffer returns the contiguous memory at once instead of at garbage
    # collection: the CMA pool is small on Zynq-7000 boards and shared with everything else.
    if buf is not None and hasattr(buf, "freebuffer"):
        buf.freebuffer()


class PynqBackend(Backend):
    """The accelerator of the bundle's bitfile, on the board this runs on.

    ``timeout_s + timeout_per_image_s * batch`` is how long a batch may take before the
    accelerator counts as hung; ``download=False`` reuses an overlay that is already loaded.
    """

    name = "pynq"
    # 32 paper-size images are 4.8 MB of input buffer: large enough to amortise the Python
    # overhead per run, small enough for the board's CMA pool.
    default_batch_size = 32

    def __init__(self, bundle, timeout_s=10.0, timeout_per_image_s=0.1, download=True):
        super().__init__(bundle)
        if bundle.bitfile_path is None:
            raise BnnError("%s: bundle has no bitfile (manifest field 'bitfile' is null), so the pynq backend "
                           "cannot run; use --backend emulator" % bundle.root)
        self.timeout_s = _seconds("timeout_s", timeout_s)
        self.timeout_per_image_s = _seconds("timeout_per_image_s", timeout_per_image_s)
        io = bundle.io
        self._idt, self._odt = io["idt"][0], io["odt"][0]
        self._ishape_folded = tuple(io["ishape_folded"][0][1:])
        self._ishape_packed = tuple(io["ishape_packed"][0][1:])
        self._oshape_folded = tuple(io["oshape_folded"][0][1:])
        self._oshape_packed = tuple(io["oshape_packed"][0][1:])
        self._bitfile = bundle.bitfile_path
        self._pynq = _import_pynq()
        self._overlay = None
        self._weights = []  # (dma ip, buffer, repeats), started before every run
        self._ibuf = self._obuf = None
        self._capacity = 0
        self._hwh_ip_dict = None
        try:
            self._overlay = self._pynq.Overlay(self._bitfile, download=download)
        except Exception as e:  # pynq raises OSError, RuntimeError, ValueError... for a bad bitfile
            raise BnnError("%s: cannot load the overlay (%s: %s)" % (self._bitfile, type(e).__name__, e)) from None
        try:
            self._idma = self._ip(io["input_dma_name"][0])
            self._odma = self._ip(io["output_dma_name"][0])
            layouts = [_npy_layout(ew.path) for ew in bundle.external_weights]
            self._check_weights_fit(bundle.external_weights, [int(np.prod(shape)) for shape, _ in layouts])
            for ew, layout in zip(bundle.external_weights, layouts):
                self._weights.append((self._ip(ew.dma), self._load_weights(ew, *layout), ew.repeats))
            if bundle.runtime_weights:
                for rw in bundle.runtime_weights:
                    self._write_runtime_weights(rw)
                self._flush_weight_streamers()
        except BaseException:
            self.close()
            raise

    @property
    def capacity(self):
        """Images the current DMA buffers hold (0 before the first extract)."""
        return self._capacity

    def _ip(self, name):
        ip_dict = getattr(self._overlay, "ip_dict", None) or {}
        if name not in ip_dict:
            raise BnnError("%s: the overlay has no IP %r (it has %s): the bitfile does not match the bundle manifest"
                           % (self._bitfile, name, ", ".join(sorted(ip_dict)) or "none"))
        ip = self._overlay
        for part in name.split("/"):  # IPs inside a block-design hierarchy are "hier/ip"
            ip = getattr(ip, part)
        return ip

    def _allocate(self, shape, what, remedy="try a smaller batch size"):
        try:
            # Cacheable, as in FINN's Zynq driver: reading results from uncached memory is slow on
            # the ARM cores, and the flush/invalidate around every run keeps the DMA coherent.
            return self._pynq.allocate(shape=shape, dtype=np.uint8, cacheable=True)
        except Exception as e:  # out of CMA memory, mostly
            raise BnnError("%s: cannot allocate %d bytes of DMA memory for %s (%s: %s); %s"
                           % (self._bitfile, int(np.prod(shape)), what, type(e).__name__, e, remedy)) from None

    def _check_weights_fit(self, weights, sizes):
        """One line before any allocation when the weights cannot fit the CMA pool, rather than pynq's error."""
        pool = cma_pool()
        need = sum(sizes)
        if pool is None or need <= pool[1]:
            return
        total, free = pool
        what = "%s: the external weights (%s) need %s of contiguous DMA memory" % (
            self._bitfile, ", ".join("%s %s" % (ew.dma, _mb(n)) for ew, n in zip(weights, sizes)), _mb(need))
        if need > total:
            raise BnnError("%s, more than the board's whole CMA pool (%s, %s; PYNQ's images reserve %d MB): "
                           "boot with a larger cma= kernel argument, or build with fewer layers streamed from DDR"
                           % (what, _mb(total), MEMINFO, PYNQ_CMA_MB))
        raise BnnError("%s, but the board's CMA pool has %s free of %s (%s): %s"
                       % (what, _mb(free), _mb(total), MEMINFO, _CMA_REMEDY))

    def _load_weights(self, ew, shape, offset):
        """A DMA buffer holding the weight file's bytes, read into it directly (no copy in this process's heap)."""
        buf = self._allocate(shape, "the external weights of %s" % ew.dma, _CMA_REMEDY)
        try:
            with open(ew.path, "rb") as f:
                f.seek(offset)
                got = f.readinto(memoryview(buf).cast("B"))
            if got != buf.nbytes:
                raise OSError("%d of %d bytes" % (got, buf.nbytes))
        except (OSError, ValueError) as e:
            _free(buf)
            raise BnnError("%s: cannot read external weights (%s)" % (ew.path, e)) from None
        buf.flush()
        return buf

    def _hwh_windows(self):
        """The bundle's .hwh as PYNQ's HWH parser reads it, for the windows pynqmetadata leaves out."""
        if self._hwh_ip_dict is None:
            try:
                self._hwh_ip_dict = self._pynq.pl_server.hwh_parser.HWH(hwh_name=self.bundle.hwh_path).ip_dict
            except Exception as e:  # an old or broken pynq, an unreadable file: not ours to sort out
                raise BnnError("%s: pynq's HWH parser cannot read it (%s: %s)"
                               % (self.bundle.hwh_path, type(e).__name__, e)) from None
        return self._hwh_ip_dict

    def _runtime_window(self, rw):
        """(physical address, size in bytes) of the AXI-lite window ``rw.ip`` names."""
        partition, _, port = rw.ip.rpartition("/")
        ip_dict = getattr(self._overlay, "ip_dict", None) or {}
        entry = _window_entry(ip_dict, partition, port)
        if entry is None and partition in ip_dict:
            entry = _window_entry(self._hwh_windows(), partition, port)
        if entry is None:
            has = ", ".join("%s [%s]" % (k, v["mem_id"]) if isinstance(v, dict) and v.get("mem_id") else k
                            for k, v in sorted(ip_dict.items()))
            raise BnnError("%s: the overlay has no AXI-lite window %s for the runtime weights of %s (it has %s): "
                           "the bitfile does not match the bundle manifest"
                           % (self._bitfile, rw.ip, rw.layer, has or "none"))
        return int(entry["phys_addr"]), int(entry["addr_range"])

    def _write_runtime_weights(self, rw):
        words = read_runtime_words(rw.path).tolist()  # Python ints: MMIO.write takes int or bytes, not numpy
        base, size = self._runtime_window(rw)
        if 4 * len(words) > size:
            raise BnnError("%s: %d weight words for %s (%s), whose AXI-lite window holds %d: the bitfile does not "
                           "match the bundle" % (rw.path, len(words), rw.ip, rw.layer, size // 4))
        try:
            mmio = self._pynq.MMIO(base, size)
            for i, w in enumerate(words):
                mmio.write(4 * i, w)
            back = [mmio.read(4 * i) for i in range(len(words))]
        except Exception as e:  # /dev/mem not accessible (not root), an unmapped window
            raise BnnError("%s: cannot write the weights of %s (%s) at 0x%x (%s: %s)"
                           % (rw.path, rw.ip, rw.layer, base, type(e).__name__, e)) from None
        wrong = [i for i, (a, b) in enumerate(zip(back, words)) if a != b]
        if wrong:
            raise BnnError("%s: the weights read back from %s (%s) differ from the ones written in %d of %d words, "
                           "the first at offset 0x%x"
                           % (rw.path, rw.ip, rw.layer, len(wrong), len(words), 4 * wrong[0]))

    def _flush_weight_streamers(self):
        self._prepare(1)
        self._ibuf[...] = 0
        self._ibuf.flush()
        self._execute(1)

    def _prepare(self, batch_size):
        if self._overlay is None:
            raise BnnError("%s: the pynq backend is closed" % self._bitfile)
        if batch_size == self._capacity:
            return
        _free(self._ibuf)
        _free(self._obuf)
        self._ibuf = self._obuf = None
        self._capacity = 0
        self._ibuf = self._allocate((batch_size,) + self._ishape_packed, "a batch of %d images" % batch_size)
        self._obuf = self._allocate((batch_size,) + self._oshape_packed, "a batch of %d outputs" % batch_size)
        self._capacity = batch_size

    def _run(self, images):
        n = images.shape[0]
        self._ibuf[:n] = pack(images.reshape((n,) + self._ishape_folded), self._idt)
        self._ibuf.flush()
        self._execute(n)
        self._obuf.invalidate()
        bits = unpack(self._obuf[:n], self._odt, (n,) + self._oshape_folded).reshape(n, self.feature_width)
        if self._odt == "BINARY":
            return bits.astype(np.int8) * np.int8(2) - np.int8(1)
        return bits

    def _start(self, ip, buf, count):
        addr = int(buf.device_address)
        ip.write(REG_ADDR_LO, addr & 0xFFFFFFFF)
        ip.write(REG_ADDR_HI, (addr >> 32) & 0xFFFFFFFF)
        ip.write(REG_COUNT, int(count))
        ip.write(REG_CTRL, CTRL_START)

    def _execute(self, n):
        """One accelerator run over the first ``n`` images of the buffers."""
        # After a timed-out run the output DMA is still waiting for data; starting it again
        # would pair this batch's input with the old run's output.
        if not self._odma.read(REG_CTRL) & CTRL_IDLE:
            raise BnnError("%s: the output DMA %r is busy (did an earlier run time out?); reload the overlay, "
                           "or reboot the board if that does not help"
                           % (self._bitfile, self.bundle.io["output_dma_name"][0]))
        for ip, buf, repeats in self._weights:
            self._start(ip, buf, n * repeats)
        self._start(self._odma, self._obuf, n)
        self._start(self._idma, self._ibuf, n)
        limit = self.timeout_s + self.timeout_per_image_s * n
        deadline = time.monotonic() + limit
        while not self._odma.read(REG_CTRL) & CTRL_DONE:
            if time.monotonic() > deadline:
                raise BnnError("%s: accelerator did not finish within %.1f s (batch %d); the bitfile may not match "
                               "the bundle or the accelerator is hung: reload the overlay (reboot if it persists)"
                               % (self._bitfile, limit, n))

    def close(self):
        for buf in [self._ibuf, self._obuf] + [w[1] for w in self._weights]:
            _free(buf)
        self._ibuf = self._obuf = None
        self._weights = []
        self._capacity = 0
        self._overlay = None
