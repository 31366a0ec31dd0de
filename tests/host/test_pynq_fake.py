"""The pynq backend against a fake board that checks the IODMA protocol and computes with the emulator."""

import importlib.util
import os
import re
import sys
import time

import numpy as np
import pytest
from fake_pynq import DONE, FEATURE_WIDTH, INPUT_SIZE, FakeBoard, FakeMMIO, board_hwh, make_bundle, tiny_io

from bnn_transfer.host.backends import available_backends, make_backend
from bnn_transfer.host.backends import pynq as pynq_backend
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.emulator import load_emulator
from bnn_transfer.host.errors import BnnError


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.uint8)


def _install(monkeypatch, bundle, **kwargs):
    board = FakeBoard(bundle, **kwargs)
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    return board


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_bundle(tmp_path / "bundle"))


def test_module_imports_without_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)
    monkeypatch.delitem(sys.modules, "bnn_transfer.host.backends.pynq", raising=False)
    module = importlib.import_module("bnn_transfer.host.backends.pynq")
    assert module.PynqBackend.name == "pynq"


def test_pynq_equals_emulator_and_reuses_buffers(bundle, monkeypatch):
    board = _install(monkeypatch, bundle)
    assert available_backends(bundle) == ["pynq", "emulator"]
    x = _images(10, seed=1)
    want = load_emulator(bundle.emulator_path).extract(x)
    assert len(np.unique(want, axis=0)) > 5

    b = make_backend("pynq", bundle)
    assert b.name == "pynq" and board.overlays == [bundle.bitfile_path]
    assert np.array_equal(b.extract(x, batch_size=4), want)
    assert board.runs == [4, 4, 2]  # split into runs of the buffer's size, the last one partial
    assert board.allocations == [(4, 8, 8, 1, 3), (4, 2, 1)]  # the manifest's packed shapes
    assert np.array_equal(b.extract(x[3:], batch_size=4), want[3:])
    assert len(board.allocations) == 2 and board.freed == []  # same batch size: same buffers
    got = b.extract(x, batch_size=3)
    assert np.array_equal(got, want) and got.dtype == np.int8
    assert board.allocations[2:] == [(3, 8, 8, 1, 3), (3, 2, 1)] and len(board.freed) == 2
    assert np.array_equal(b.extract(x, batch_size=16), want)
    assert board.runs[-1] == 10 and b.capacity == 16

    assert board.errors == []
    # every run: output DMA programmed and started before the input DMA, same count
    pairs = [board.log[i: i + 2] for i in range(0, len(board.log), 2)]
    assert all(p[0] == ("odma0", n) and p[1] == ("idma0", n) for p, n in zip(pairs, board.runs))
    assert board.flushes == board.invalidates == len(board.runs)
    b.close()
    assert len(board.freed) == len(board.allocations) and board.dram == {}
    with pytest.raises(BnnError, match=r"finn-accel\.bit: the pynq backend is closed"):
        b.extract(x)


def test_binary_output_datatype(tmp_path, monkeypatch):
    bundle = load_bundle(make_bundle(tmp_path / "b", io=tiny_io(odt="BINARY")))
    board = _install(monkeypatch, bundle)
    x = _images(5, seed=2)
    with make_backend("pynq", bundle) as b:
        assert np.array_equal(b.extract(x), load_emulator(bundle.emulator_path).extract(x))
    assert board.errors == []


def test_external_weights_start_first_and_are_loaded_once(tmp_path, monkeypatch):
    """A bundle with two weight streams (any order of DMA names: the backend takes the manifest's; build_fpga
    names fc1's idma0, fc2's idma1, the image's idma2): both loaded once, programmed with address and n * repeats before
    the output and input DMAs of every batch, and freed on close."""
    rng = np.random.default_rng(7)
    fc1, fc2 = rng.integers(0, 256, size=37).astype(np.uint8), rng.integers(0, 256, size=16).astype(np.uint8)
    io = dict(tiny_io(), input_dma_name=["idma2"])
    bundle = load_bundle(make_bundle(tmp_path / "b", io=io, external_weights=[("idma1", fc1, 1), ("idma0", fc2, 3)]))
    board = _install(monkeypatch, bundle, weights={"idma1": (fc1, 1), "idma0": (fc2, 3)})
    x = _images(7, seed=3)
    with make_backend("pynq", bundle) as b:
        assert np.array_equal(b.extract(x, batch_size=4), load_emulator(bundle.emulator_path).extract(x))
        assert np.array_equal(b.extract(x, batch_size=2), load_emulator(bundle.emulator_path).extract(x))
        weight_buffers = [w[1].device_address for w in b._weights]
    assert board.errors == []
    assert board.log[:4] == [("idma1", 4), ("idma0", 12), ("odma0", 4), ("idma2", 4)]
    assert board.log[-4:] == [("idma1", 1), ("idma0", 3), ("odma0", 1), ("idma2", 1)]  # the batch's last image
    assert board.allocations.count((37,)) == 1 and board.allocations.count((16,)) == 1
    assert len(weight_buffers) == 2 and all(a in board.freed for a in weight_buffers)
    assert board.dram == {}  # every buffer (weights, input, output) went back to the CMA pool


# The paper preset's streamed weights (fc1: 9216 x 4096 bits, fc2: 4096 x 4096), bytes per image
PAPER_FC1, PAPER_FC2 = 9216 * 4096 // 8, 4096 * 4096 // 8


def _paper_weights_bundle(tmp_path, monkeypatch, **board):
    """A bundle streaming paper-size fc1/fc2 weights (6.8 MB) on a fake board whose /proc/meminfo the backend reads."""
    rng = np.random.default_rng(11)
    fc1, fc2 = (rng.integers(0, 256, size=n, dtype=np.uint8) for n in (PAPER_FC1, PAPER_FC2))
    io = dict(tiny_io(), input_dma_name=["idma2"])
    # FINN's names: the streamed layers' DMAs in graph order, then the image's (build_fpga's weight_dma_names)
    bundle = load_bundle(make_bundle(tmp_path / "b", io=io, external_weights=[("idma0", fc1, 1), ("idma1", fc2, 1)]))
    board = _install(monkeypatch, bundle, weights={"idma0": (fc1, 1), "idma1": (fc2, 1)}, **board)
    meminfo = tmp_path / "meminfo"
    monkeypatch.setattr(pynq_backend, "MEMINFO", str(meminfo))
    return bundle, board, meminfo


def test_paper_size_weights_are_read_once_into_dma_buffers_that_serve_every_batch(tmp_path, monkeypatch):
    """6.8 MB of weights in PYNQ's 128 MB CMA pool: one buffer per stream, filled when the backend is made,
    reused by batches of every size (only the image and feature buffers follow the batch size), freed on close."""
    bundle, board, meminfo = _paper_weights_bundle(tmp_path, monkeypatch)
    meminfo.write_text(board.meminfo())
    x = _images(9, seed=6)
    want = load_emulator(bundle.emulator_path).extract(x)
    with make_backend("pynq", bundle) as b:
        assert board.allocations == [(PAPER_FC1,), (PAPER_FC2,)] and board.runs == []
        for bs in (4, 2, 9, 4):
            assert np.array_equal(b.extract(x, batch_size=bs), want)
    assert board.errors == [] and board.runs == [4, 4, 1, 2, 2, 2, 2, 1, 9, 4, 4, 1]
    assert board.allocations.count((PAPER_FC1,)) == 1 and board.allocations.count((PAPER_FC2,)) == 1
    batch_bytes = 9 * (8 * 8 * 3 + 2)  # the largest batch's image and feature buffers
    assert board.cma_peak == PAPER_FC1 + PAPER_FC2 + batch_bytes and board.cma_used == 0


def test_weights_the_cma_pool_cannot_hold_are_one_line_before_any_allocation(tmp_path, monkeypatch):
    bundle, board, meminfo = _paper_weights_bundle(tmp_path, monkeypatch)
    board.cma_used = board.cma_bytes - (4 << 20)  # other programs hold all but 4 MiB
    meminfo.write_text(board.meminfo())
    with pytest.raises(BnnError) as e:
        make_backend("pynq", bundle)
    assert str(e.value) == (
        "%s: the external weights (idma0 4.7 MB, idma1 2.1 MB) need 6.8 MB of contiguous DMA memory, but the "
        "board's CMA pool has 4.2 MB free of 134.2 MB (%s): other programs hold DMA buffers (a notebook with an "
        "overlay loaded: shut its kernel down), or reboot" % (bundle.bitfile_path, meminfo))
    assert board.allocations == []

    small, board, meminfo = _paper_weights_bundle(tmp_path / "small", monkeypatch, cma_bytes=6 << 20)
    meminfo.write_text(board.meminfo())
    with pytest.raises(BnnError, match=r"need 6\.8 MB of contiguous DMA memory, more than the board's whole CMA pool "
                                       r"\(6\.3 MB, .*meminfo; PYNQ's images reserve 128 MB\): boot with a larger "
                                       r"cma= kernel argument, or build with fewer layers streamed from DDR$"):
        make_backend("pynq", small)
    assert board.allocations == []


def test_a_weight_allocation_pynq_refuses_is_one_line_naming_the_stream(tmp_path, monkeypatch):
    """Without /proc/meminfo's CMA lines (or when another program takes the memory meanwhile) pynq's own error."""
    bundle, board, meminfo = _paper_weights_bundle(tmp_path, monkeypatch, cma_bytes=5 << 20)
    with pytest.raises(BnnError) as e:
        make_backend("pynq", bundle)
    assert str(e.value) == (
        "%s: cannot allocate %d bytes of DMA memory for the external weights of idma1 (RuntimeError: BO allocation "
        "failed: [Errno 12] Cannot allocate memory); other programs hold DMA buffers (a notebook with an overlay "
        "loaded: shut its kernel down), or reboot" % (bundle.bitfile_path, PAPER_FC2))
    assert board.cma_used == 0 and board.freed  # fc1's buffer, taken first, went back


def test_missing_or_tampered_weight_file_is_one_line_naming_it(tmp_path, monkeypatch):
    data = np.arange(37, dtype=np.uint8)
    root = make_bundle(tmp_path / "b", external_weights=[("idma1", data, 1)])
    path = tmp_path / "b" / "runtime_weights" / "idma1.npy"
    os.rename(path, str(path) + ".bak")
    with pytest.raises(BnnError, match=r"^.*runtime_weights/idma1\.npy: file listed in .*manifest\.json is missing$"):
        load_bundle(root)
    os.rename(str(path) + ".bak", path)
    np.save(path, data[::-1].copy())
    with pytest.raises(BnnError, match=r"^.*runtime_weights/idma1\.npy: sha256 does not match"):
        load_bundle(root)
    assert not (tmp_path / "b" / "runtime_weights" / "idma1.npy.bak").exists()


RT_IPS = ("StreamingDataflowPartition_1/s_axilite_0", "StreamingDataflowPartition_1/s_axilite_1")


def _runtime_bundle(tmp_path, sizes=(40, 9), ips=RT_IPS, **kwargs):
    rng = np.random.default_rng(5)
    words = [rng.integers(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32) for n in sizes]
    return load_bundle(make_bundle(tmp_path / "b", runtime_weights=list(zip(ips, words)), **kwargs)), words


def _bus_words(board, ip, n):
    return [board.bus.get(board.mems[ip].base + 4 * i) for i in range(n)]


def test_runtime_writeable_weights_are_written_read_back_and_flushed(tmp_path, monkeypatch):
    """URAM weights of an UltraScale+ design (FINN's runtime_writeable_weights): written once into each
    layer's AXI-lite window when the overlay loads, one word at a time, and read back; then one discarded
    batch flushes the weights the streamers had prefetched, so the very first real batch already equals
    the emulator."""
    bundle, words = _runtime_bundle(tmp_path)
    board = _install(monkeypatch, bundle, runtime=dict(zip(RT_IPS, words)))
    x = _images(5, seed=4)
    with make_backend("pynq", bundle) as b:
        assert board.runs == [1]  # the flush, before any image of ours
        assert np.array_equal(b.extract(x, batch_size=5), load_emulator(bundle.emulator_path).extract(x))
    assert board.errors == [] and board.runs == [1, 5]
    want_log = []
    for ip, w in zip(RT_IPS, words):
        assert _bus_words(board, ip, w.size) == w.tolist()
        addresses = [board.mems[ip].base + 4 * i for i in range(w.size)]
        want_log += [("write", a) for a in addresses] + [("read", a) for a in addresses]
    assert board.bus_log == want_log


def test_fake_board_computes_stale_weights_until_flushed(tmp_path, monkeypatch):
    """What the flush guards against: without it the first batch after loading is wrong."""
    bundle, words = _runtime_bundle(tmp_path)
    board = _install(monkeypatch, bundle, runtime=dict(zip(RT_IPS, words)))
    x = _images(2, seed=1)
    with make_backend("pynq", bundle) as b:
        mem = board.mems[RT_IPS[1]]
        sys.modules["pynq"].MMIO(mem.base, mem.size).write(0, int(words[1][0]))  # the streamers hold old words again
        first, second = b.extract(x), b.extract(x)
    assert np.array_equal(first, -second) and np.array_equal(second, load_emulator(bundle.emulator_path).extract(x))
    board.bus[board.mems[RT_IPS[0]].base] ^= 1
    assert "runtime weights of %s not loaded" % RT_IPS[0] not in board.errors
    board.run(board.idma)
    assert "runtime weights of %s not loaded" % RT_IPS[0] in board.errors


def test_fake_mmio_is_pynqs(tmp_path, monkeypatch):
    """The fake refuses what pynq.MMIO refuses, so the backend's writes would work on a board."""
    bundle, words = _runtime_bundle(tmp_path)
    board = _install(monkeypatch, bundle, runtime=dict(zip(RT_IPS, words)))
    make_backend("pynq", bundle).close()
    mem = board.mems[RT_IPS[0]]
    mmio = sys.modules["pynq"].MMIO(mem.base, mem.size)
    with pytest.raises(ValueError, match="Data type must be int or bytes"):
        mmio.write(0, np.uint32(1))  # pynq's write_mm tests type(data) is int
    with pytest.raises(MemoryError, match="Unaligned"):
        mmio.write(2, 1)
    with pytest.raises(IndexError):
        mmio.read(mem.size)
    beyond = max(m.base + m.size for m in board.mems.values())
    sys.modules["pynq"].MMIO(beyond, 4).write(0, 1)
    assert board.errors == ["MMIO write to 0x%x, outside every runtime weight window" % beyond]


def test_weights_that_cannot_be_written_or_do_not_read_back_are_one_line_errors(tmp_path, monkeypatch):
    bundle, words = _runtime_bundle(tmp_path)
    board = _install(monkeypatch, bundle, runtime=dict(zip(RT_IPS, words)))
    pynq = sys.modules["pynq"]

    def no_dev_mem(base_addr, length=4):  # pynq.MMIO opens /dev/mem, which needs root
        raise PermissionError("[Errno 13] Permission denied: '/dev/mem'")

    monkeypatch.setattr(pynq, "MMIO", no_dev_mem)
    with pytest.raises(BnnError, match=r"1_0_MVAU_hls_0\.dat: cannot write the weights of %s \(fc0\) at 0x[0-9a-f]+ "
                                       r"\(PermissionError: \[Errno 13\] Permission denied: '/dev/mem'\)$" % RT_IPS[0]):
        make_backend("pynq", bundle)

    class FlippedBit(FakeMMIO):  # the third word reads back with its lowest bit flipped
        def read(self, offset=0):
            return super().read(offset) ^ (offset == 8)

    monkeypatch.setattr(pynq, "MMIO", lambda base_addr, length=4: FlippedBit(board, base_addr, length))
    with pytest.raises(BnnError, match=r"1_0_MVAU_hls_0\.dat: the weights read back from %s \(fc0\) differ from the "
                                       r"ones written in 1 of 40 words, the first at offset 0x8$" % RT_IPS[0]):
        make_backend("pynq", bundle)
    assert board.runs == [] and board.errors == []


def test_runtime_weights_that_do_not_fit_or_do_not_parse_are_one_line_errors(tmp_path, monkeypatch):
    from bnn_transfer.host.backends.pynq import read_runtime_words

    ip = "StreamingDataflowPartition_1/s_axilite_0"
    bundle, words = _runtime_bundle(tmp_path, sizes=(1500,), ips=(ip,))
    board = _install(monkeypatch, bundle, runtime={ip: words[0]}, windows={ip: 4096})  # FINN's smallest window
    with pytest.raises(BnnError, match=r"1_0_MVAU_hls_0\.dat: 1500 weight words for %s \(fc0\), whose AXI-lite "
                                       r"window holds 1024: the bitfile does not match the bundle$" % ip):
        make_backend("pynq", bundle)
    assert board.bus_log == []  # refused before the first write
    for text in ("00000001\nzz\n", "", "100000000\n"):
        (tmp_path / "w.dat").write_text(text)
        with pytest.raises(BnnError, match=r"w\.dat: not a FINN runtime weight file"):
            read_runtime_words(str(tmp_path / "w.dat"))


def test_a_runtime_memory_the_overlay_lacks_is_one_line_naming_what_it_has(tmp_path, monkeypatch):
    """The manifest lists a memory the bitfile does not have (its .hwh is the bitfile's, as a build writes it)."""
    ips = RT_IPS + ("StreamingDataflowPartition_3/s_axilite_0",)
    hwh, _ = board_hwh("zynq_7000", ["idma0", "odma0"], {RT_IPS[0]: 160, ips[2]: 16})
    bundle, words = _runtime_bundle(tmp_path, sizes=(40, 9, 4), ips=ips, hwh_text=hwh)
    board = _install(monkeypatch, bundle, runtime={RT_IPS[0]: words[0], ips[2]: words[2]})
    with pytest.raises(BnnError) as e:
        make_backend("pynq", bundle)
    assert "\n" not in str(e.value)
    assert re.fullmatch(r".*finn-accel\.bit: the overlay has no AXI-lite window "
                        r"StreamingDataflowPartition_1/s_axilite_1 for the runtime weights of fc1 "
                        r"\(it has StreamingDataflowPartition_1 \[s_axilite_0\], "
                        r"StreamingDataflowPartition_3 \[s_axilite_0\], idma0 \[s_axi_control_0\], "
                        r"odma0 \[s_axi_control_0\], zynq_ps\): the bitfile does not match the bundle manifest",
                        str(e.value))
    assert board.runs == []


def test_fake_board_enforces_the_start_order(bundle, monkeypatch):
    """The fake is only a test if it refuses what real hardware would not survive."""
    board = _install(monkeypatch, bundle)
    buf_in = board.allocate((1, 8, 8, 1, 3))
    buf_out = board.allocate((1, 2, 1))
    for dma, buf in ((board.idma, buf_in), (board.odma, buf_out)):  # input first: wrong
        dma.write(0x10, buf.device_address & 0xFFFFFFFF)
        dma.write(0x14, buf.device_address >> 32)
        dma.write(0x1C, 1)
        dma.write(0x00, 1)
    assert board.errors == ["input DMA started before the output DMA"]
    assert not board.odma.read(0x00) & DONE and board.runs == []


def test_hung_accelerator_times_out(bundle, monkeypatch):
    board = _install(monkeypatch, bundle, hang=True)
    b = make_backend("pynq", bundle, timeout_s=0.2, timeout_per_image_s=0.0)
    t0 = time.monotonic()
    with pytest.raises(BnnError, match=r"finn-accel\.bit: accelerator did not finish within 0\.2 s \(batch 3\); "):
        b.extract(_images(3), batch_size=8)
    assert time.monotonic() - t0 < 2.0
    assert board.errors == []  # the protocol was right: the hardware just never answered
    # the output DMA still waits for data: refuse to start another run on top of it
    with pytest.raises(BnnError, match=r"the output DMA 'odma0' is busy \(did an earlier run time out\?\)"):
        b.extract(_images(3))


def test_timeout_options(bundle, monkeypatch):
    _install(monkeypatch, bundle)
    b = make_backend("pynq", bundle)
    assert (b.timeout_s, b.timeout_per_image_s) == (10.0, 0.1)
    with pytest.raises(BnnError, match=r"timeout_s must be a non-negative number of seconds"):
        make_backend("pynq", bundle, timeout_s=-1)


def test_overlay_without_the_manifests_dma(bundle, monkeypatch):
    board = FakeBoard(bundle)
    del board.dmas["odma0"]
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    with pytest.raises(BnnError, match=r"finn-accel\.bit: the overlay has no IP 'odma0' \(it has idma0, zynq_ps\): the "
                                       r"bitfile does not match the bundle manifest$"):
        make_backend("pynq", bundle)


def test_allocation_failure_is_a_clear_error(bundle, monkeypatch):
    board = _install(monkeypatch, bundle)

    def no_memory(*args, **kwargs):
        raise MemoryError("CMA exhausted")

    monkeypatch.setattr(board, "allocate", no_memory)
    b = make_backend("pynq", bundle)
    with pytest.raises(BnnError, match=r"cannot allocate 153600 bytes of DMA memory for a batch of 800 images "
                                       r"\(MemoryError: CMA exhausted\); try a smaller batch size$"):
        b.extract(_images(2), batch_size=800)


def test_broken_bitfile(bundle, monkeypatch):
    board = _install(monkeypatch, bundle)
    monkeypatch.setattr(sys.modules["pynq"], "Overlay", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    with pytest.raises(BnnError, match=r"finn-accel\.bit: cannot load the overlay \(RuntimeError: bad\)$"):
        make_backend("pynq", bundle)
    assert board.allocations == []


@pytest.mark.finn
@pytest.mark.skipif(importlib.util.find_spec("finn") is None, reason="needs finn-plus")
def test_buffers_hold_finns_driver_layout(bundle, monkeypatch):
    """The bytes in the DMA buffers are what FINN's driver (pack_input/unpack_output) makes of them."""
    from finn.util.data_packing import finnpy_to_packed_bytearray, packed_bytearray_to_finnpy
    from qonnx.core.datatype import DataType

    board = _install(monkeypatch, bundle)
    n = 5
    x = _images(n, seed=4)
    feats = make_backend("pynq", bundle).extract(x, batch_size=n)
    ifolded = [n] + bundle.io["ishape_folded"][0][1:]
    ofolded = [n] + bundle.io["oshape_folded"][0][1:]
    want_in = finnpy_to_packed_bytearray(x.reshape(ifolded), DataType["UINT8"], reverse_inner=True,
                                         reverse_endian=True)
    in_bytes = board.dram[board.idma.address]
    assert np.array_equal(in_bytes, np.ascontiguousarray(want_in).reshape(-1))
    out_bytes = board.dram[board.odma.address].reshape([n] + bundle.io["oshape_packed"][0][1:])
    finn_feats = packed_bytearray_to_finnpy(out_bytes, DataType["BIPOLAR"], ofolded, reverse_inner=True,
                                            reverse_endian=True)
    assert np.array_equal(finn_feats.reshape(n, FEATURE_WIDTH), feats)
