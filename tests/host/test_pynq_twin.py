"""The pynq backend against the real PYNQ: FINN-shaped .hwh files (``finn_hwh``) read by PYNQ 2.7's and
4.0's HWH parser and by pynqmetadata (PYNQ 3.x/4.0 overlays), the ip_dicts they make of one and of two
AXI-lite windows in a partition, and the backend finding, writing and reading back every runtime-writeable
memory through each of them (``pynq_twin`` runs the real packages .ci/install puts under .venv/)."""

import sys
import types

import numpy as np
import pynq_twin
import pytest
from fake_pynq import FakeBoard, FakeMMIO, board_hwh, hwh_names, make_bundle

from bnn_transfer.host.backends import make_backend
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.emulator import load_emulator
from bnn_transfer.host.errors import BnnError

PARTS = {"zynq_us+": "xck26-sfvc784-2LV-c", "zynq_7000": "xc7z020clg400-1"}
# Words per memory: two in partition 1, one (in an 8 KiB window) in partition 3; board_hwh adds
# partition 2, a compute partition without AXI-lite, and the IODMAs idma0/odma0.
MEMORIES = {"StreamingDataflowPartition_1/s_axilite_0": 40, "StreamingDataflowPartition_1/s_axilite_1": 9,
            "StreamingDataflowPartition_3/s_axilite_0": 1500}


def _parser(name):
    why = pynq_twin.missing(name)
    if why:
        pytest.skip(why)
    return name


@pytest.fixture(params=sorted(pynq_twin.PARSERS))
def parser(request):
    return _parser(request.param)


@pytest.fixture(params=sorted(PARTS))
def zynq(request):
    return request.param


def _entries(ip_dict):
    return {k: (v["phys_addr"], v["addr_range"], v["mem_id"]) for k, v in ip_dict.items() if "phys_addr" in v}


def test_pynq_names_one_and_two_axilite_windows_of_a_core(parser, zynq):
    """What each PYNQ makes of FINN's design. The HWH parser: a core with one window under its own name,
    with two under "<core>/<interface>" each (``hwh_names``, the fake's rule without the real pynq).
    pynqmetadata: one entry per core, with the window of one of its interfaces (mem_id; the last the
    PS's memory map lists, s_axilite_1, in 0.2.0), so the other window is not in its ip_dict."""
    text, windows = board_hwh(zynq, ["idma0", "odma0"], {ip: 4 * n for ip, n in MEMORIES.items()})
    ip_dict = pynq_twin.parse(text, parser)
    got = _entries(ip_dict)
    rule = hwh_names(windows)
    if parser.endswith("-hwh"):
        assert sorted(ip_dict) == sorted(rule) and got == _entries(rule)
        assert "StreamingDataflowPartition_1" not in ip_dict
    else:
        assert sorted(ip_dict) == ["StreamingDataflowPartition_1", "StreamingDataflowPartition_3", "idma0", "odma0",
                                   "zynq_ps"]
        base, size, mem_id = got.pop("StreamingDataflowPartition_1")
        assert mem_id in ("s_axilite_0", "s_axilite_1")
        assert (base, size) == windows["StreamingDataflowPartition_1/" + mem_id]
        assert got == {k: v for k, v in _entries(rule).items() if not k.startswith("StreamingDataflowPartition_1/")}
    assert got["StreamingDataflowPartition_3"][1] == 8192 and not any("_2" in k for k in ip_dict)


def _bundle(tmp_path, zynq, memories, **kwargs):
    rng = np.random.default_rng(3)
    words = {ip: rng.integers(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32) for ip, n in memories.items()}
    root = make_bundle(tmp_path / "b", part=PARTS[zynq], runtime_weights=list(words.items()), **kwargs)
    return load_bundle(root), words


def test_backend_writes_every_memory_word_by_word_whatever_pynq_parsed(parser, zynq, tmp_path, monkeypatch):
    """Every memory found through the ip_dict of each PYNQ (pynqmetadata's lost window through the bundle's
    .hwh and the same pynq's HWH parser), written one word at a time, read back, and the accelerator runs."""
    bundle, words = _bundle(tmp_path, zynq, MEMORIES)
    board = FakeBoard(bundle, runtime=words, parser=parser)
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    x = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)
    with make_backend("pynq", bundle) as b:
        assert np.array_equal(b.extract(x), load_emulator(bundle.emulator_path).extract(x))
    assert board.errors == [] and board.runs == [1, 3]
    log = []
    for ip, w in words.items():
        addresses = [board.mems[ip].base + 4 * i for i in range(w.size)]
        assert [board.bus[a] for a in addresses] == w.tolist()
        log += [("write", a) for a in addresses] + [("read", a) for a in addresses]
    assert board.bus_log == log
    assert board.hwh_parsed == ([bundle.hwh_path] if parser.endswith("-pynqmetadata") else [])


def test_a_memory_the_design_lacks_is_one_line_naming_what_the_overlay_has(parser, zynq, tmp_path, monkeypatch):
    """The manifest lists a third window of partition 1 that the bitfile (and its .hwh) do not have."""
    lacking = "StreamingDataflowPartition_1/s_axilite_2"
    hwh, _ = board_hwh(zynq, ["idma0", "odma0"], {ip: 4 * n for ip, n in MEMORIES.items()})
    bundle, words = _bundle(tmp_path, zynq, dict(MEMORIES, **{lacking: 4}), hwh_text=hwh)
    board = FakeBoard(bundle, runtime={ip: w for ip, w in words.items() if ip != lacking}, parser=parser)
    monkeypatch.setitem(sys.modules, "pynq", board.module())
    with pytest.raises(BnnError) as e:
        make_backend("pynq", bundle)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(bundle.bitfile_path + ": the overlay has no AXI-lite window %s for the "
                                              "runtime weights of fc3 (it has " % lacking)
    assert msg.endswith("): the bitfile does not match the bundle manifest")
    for name, entry in pynq_twin.parse(hwh, parser).items():
        assert name in msg and (entry.get("mem_id") or "") in msg
    assert board.runs == [] and board.errors == []


@pytest.mark.parametrize("parser", ["pynq-2.7.0-hwh", "pynq-4.0.0-hwh"])
def test_the_fake_mmio_does_what_pynqs_does(parser):
    """pynq.MMIO of each pynq, on a window it maps, against the fake's on the board's bus."""
    want = pynq_twin.mmio_outcomes(_parser(parser))
    board = types.SimpleNamespace(mems={"m": types.SimpleNamespace(base=0xA0000000, size=16)}, bus={}, bus_log=[],
                                  errors=[], stale=False)
    got = pynq_twin.call_mmio(lambda base, length: FakeMMIO(board, base, length))
    assert [o[0] for o in got] == [o[0] for o in want] and [o for o in got if o[0] == "ok"] == [
        o for o in want if o[0] == "ok"]
    assert want[1] == ["ok", 0xDEADBEEF] and board.errors == []
