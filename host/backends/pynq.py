"""The ``pynq`` backend: the FINN accelerator on a PYNQ board, driven through its IODMAs.

This reimplements what FINN's generated driver does on the ``zynq-iodma`` platform, so the
board needs neither that driver nor ``bitstring``; every shape, datatype and IP name comes from
the bundle manifest's io dict (see ``host.bundle``):

1. Load the overlay from the bundle's bitfile (pynq finds the .hwh next to it) and look up the
   IODMA IPs by name: ``io.input_dma_name``, ``io.output_dma_name`` and the external weights'
   DMAs. External weights are copied once into DMA buffers. Runtime-writeable weights (on-chip
   memories the bitstream cannot initialise: URAM on UltraScale+) are written once into their
   layer's AXI-lite memory window and read back; then one batch of zeros runs and is discarded,
   because the layers' weight streamers had prefetched the memories' contents from before the
   write (FINN's driver flushes the same way).
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

import time

import numpy as np

from ..errors import BnnError
from ..packing import pack, unpack
from . import Backend

# The control registers of FINN's IODMA (an HLS block with ap_ctrl_hs): the buffer address is a
# 64-bit argument split over 0x10/0x14, which is why the image count sits at 0x1C.
REG_CTRL = 0x00
REG_ADDR_LO = 0x10
REG_ADDR_HI = 0x14
REG_COUNT = 0x1C
CTRL_START = 0x1
CTRL_DONE = 0x2
CTRL_IDLE = 0x4


def _import_pynq():
    try:
        import pynq
    except ImportError:
        raise BnnError("pynq backend needs the pynq package, which runs on PYNQ boards only; "
                       "use --backend emulator on other machines") from None
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
        with open(path, encoding="ascii") as f:
            text = f.read()
        words = np.array([int(w, 16) for w in text.split()], dtype=np.uint64)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BnnError("%s: not a FINN runtime weight file (one 32-bit hex word per line): %s" % (path, e)) from None
    if words.size == 0 or (words >> 32).any():
        raise BnnError("%s: not a FINN runtime weight file (empty, or a word wider than 32 bits)" % path)
    return words.astype(np.uint32)


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
        try:
            self._overlay = self._pynq.Overlay(self._bitfile, download=download)
        except Exception as e:  # pynq raises OSError, RuntimeError, ValueError... for a bad bitfile
            raise BnnError("%s: cannot load the overlay (%s: %s)" % (self._bitfile, type(e).__name__, e)) from None
        try:
            self._idma = self._ip(io["input_dma_name"][0])
            self._odma = self._ip(io["output_dma_name"][0])
            for ew in bundle.external_weights:
                self._weights.append((self._ip(ew.dma), self._load_weights(ew), ew.repeats))
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

    def _allocate(self, shape, what):
        try:
            # Cacheable, as in FINN's Zynq driver: reading results from uncached memory is slow on
            # the ARM cores, and the flush/invalidate around every run keeps the DMA coherent.
            return self._pynq.allocate(shape=shape, dtype=np.uint8, cacheable=True)
        except Exception as e:  # out of CMA memory, mostly
            raise BnnError("%s: cannot allocate %d bytes of DMA memory for %s (%s: %s); try a smaller batch size"
                           % (self._bitfile, int(np.prod(shape)), what, type(e).__name__, e)) from None

    def _load_weights(self, ew):
        try:
            arr = np.load(ew.path, allow_pickle=False)
        except Exception as e:  # corrupt or foreign file (the bundle hash guards against tampering)
            raise BnnError("%s: cannot read external weights (%s)" % (ew.path, e)) from None
        if arr.dtype != np.uint8 or arr.size == 0:
            raise BnnError("%s: external weights must be non-empty packed uint8 bytes, got %s %r"
                           % (ew.path, arr.dtype, arr.shape))
        buf = self._allocate(arr.shape, "the external weights of %s" % ew.dma)
        buf[...] = arr
        buf.flush()
        return buf

    def _write_runtime_weights(self, rw):
        words = read_runtime_words(rw.path)
        window = self._ip(rw.ip).mmio.array
        if words.size > window.size:
            raise BnnError("%s: %d weight words for %s (%s), whose AXI-lite window holds %d: the bitfile does not "
                           "match the bundle" % (rw.path, words.size, rw.ip, rw.layer, window.size))
        window[: words.size] = words
        if not np.array_equal(window[: words.size], words):
            raise BnnError("%s: the weights read back from %s (%s) differ from the ones written"
                           % (rw.path, rw.ip, rw.layer))

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
