"""The folding search (build_fpga/folding.py) and the FIFO/DWC/IODMA rows of the fit check.

One FINN flow of the tiny stand-in at its smallest folding; the search then runs on boards whose
margin for one resource is cut, so that each resource in turn is the one that binds. (The z2 search
on the real Pynq-Z2 margins is measured by ``python -m bench``, not here: it takes a minute.)
"""

import importlib.util
import json
import os
import sys
from dataclasses import replace

import pytest

HAVE_FINN = all(importlib.util.find_spec(m) is not None for m in ("finn", "qonnx"))
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus and qonnx")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    from test_flow import make_standin

    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.finn_flow import run_flow

    tmp = tmp_path_factory.mktemp("folding")
    path, _, _, _ = make_standin("tiny", tmp, n_images=2, ties=False)
    est = run_flow(path, tmp / "build", BuildConfig(board="pynq-z2"))  # FINN's smallest folding
    return tmp / "build", est


def final_model(out):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(out / "intermediate_models" / "step_generate_estimate_reports.onnx"))


def tightened(resource, margin):
    from bnn_transfer.build_fpga.boards import get_board

    board = get_board("pynq-z2")
    return replace(board, margins={**board.margins, resource: margin})


@pytest.mark.parametrize("resource,margin", [("lut", 0.2), ("bram18", 0.15), ("dsp", 0.05)])
def test_search_keeps_every_margin_and_names_the_binding_resource(tiny_flow, resource, margin):
    from bnn_transfer.build_fpga.estimates import RESOURCE_KEYS
    from bnn_transfer.build_fpga.folding import search

    out, smallest = tiny_flow
    board = tightened(resource, margin)
    found = search(final_model(out), board, 100.0)
    assert found.binding == resource and resource.upper() in found.binding_detail
    assert found.bottleneck in found.binding_detail
    for r in RESOURCE_KEYS:
        assert found.used[r] <= board.usable[r], r
    assert found.fps > 10 * smallest.fps and len(found.steps) > 5
    assert found.fps == pytest.approx(100e6 / found.max_cycles)


def test_search_folding_is_what_finn_estimates(tiny_flow, tmp_path):
    """The search's numbers are FINN's: refolding FINN with the folding found gives the same fps and,
    with the FIFO/DWC/IODMA rows, the same resources; and a step was refused only for those rows."""
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.estimates import RESOURCE_KEYS, parse_estimates
    from bnn_transfer.build_fpga.finn_flow import refold
    from bnn_transfer.build_fpga.folding import search

    out, _ = tiny_flow
    board = tightened("lut", 0.2)
    found = search(final_model(out), board, 100.0)
    assert found.binding_detail.endswith("(with FIFOs, DWCs and IODMAs)")  # the layers alone would fit
    folding = tmp_path / "folding.json"
    folding.write_text(json.dumps(found.config))
    refold(out, BuildConfig(board="pynq-z2", folding=str(folding)))
    est = parse_estimates(out / "report", board, 100.0, out / "intermediate_models")
    assert est.fps == pytest.approx(found.fps) and est.bottleneck == found.bottleneck
    assert {r: getattr(est, r).used for r in RESOURCE_KEYS} == found.used
    assert est.check_fit() == []


def test_fifos_dwcs_and_iodmas_are_counted_in_the_fit_check(tiny_flow):
    """A design whose layers fit but which does not fit with its FIFOs, converters and DMAs is over the
    margin and, beyond the board, refused."""
    from bnn_transfer.build_fpga.estimates import IODMA_RULE, parse_estimates

    out, est = tiny_flow
    kinds = [x["kind"] for x in est.interconnect]
    assert kinds.count("iodma") == 2 and kinds.count("fifo") > 0
    assert all(x["lut"] == IODMA_RULE["lut"] for x in est.interconnect if x["kind"] == "iodma")
    fifos = [x for x in est.interconnect if x["kind"] == "fifo"]
    assert all(x["depth"] == 2 and x["ram_style"] == "srl" and x["bram18"] == 0 for x in fifos)  # force_minimal
    layers, around = est.lut.layers, est.lut.interconnect
    assert around > 0 and est.lut.used == layers + around

    # the design in out/ now (an earlier test may have refolded it)
    now = parse_estimates(out / "report", tightened("lut", 1.0), 100.0, out / "intermediate_models")
    layers, around = now.lut.layers, now.lut.interconnect
    squeezed = replace(tightened("lut", 1.0), lut=layers + around // 2)  # the layers alone fit
    small = parse_estimates(out / "report", squeezed, 100.0, out / "intermediate_models")
    assert small.lut.layers <= squeezed.lut < small.lut.used
    assert any(line.startswith("LUT ") for line in small.check_fit())
    refusal = small.fit_refusal("deploy", "file")
    assert refusal is not None and "LUT needs %s" % format(small.lut.used, ",") in refusal


def test_fifos_are_priced_as_the_fifo_strategy_builds_them(tiny_flow):
    """force_minimal_fifos (the hardware build's default) builds every FIFO at the depth its neighbours
    ask for (FINN's InsertFIFO: 2 unless a node's inFIFODepths/outFIFODepths say more), in the storage
    fifo.sv picks for it, priced by FINN's StreamingFIFO model: a shift register of one LUT per bit,
    no BRAM. distributed_sim (depths by simulation) is priced by our allowance: a map row per FIFO."""
    from qonnx.custom_op.registry import getCustomOp

    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.estimates import interconnect

    out, _ = tiny_flow
    board = get_board("pynq-z2")
    model = final_model(out)
    minimal = [x for x in interconnect(model, board, "force_minimal_fifos") if x["kind"] == "fifo"]
    for x in minimal:
        assert (x["depth"], x["ram_style"], x["bram18"], x["uram"]) == (2, "srl", 0, 0)
        assert x["width"] <= x["lut"] < x["width"] + 32  # one SRL per bit plus the pointer
    sim = [x for x in interconnect(model, board, "distributed_sim") if x["kind"] == "fifo"]
    assert [x["width"] for x in sim] == [x["width"] for x in minimal]  # FINN builds the same FIFOs, deeper
    assert all(s["depth"] >= 2 for s in sim) and max(s["depth"] for s in sim) >= 32

    # a node asking for a deeper output FIFO gets it, in the storage fifo.sv picks at that depth
    first = next(n for n in model.graph.node if n.op_type.startswith("MVAU"))
    getCustomOp(first).set_nodeattr("outFIFODepths", [256])
    deeper = [x for x in interconnect(model, board, "force_minimal_fifos") if x["kind"] == "fifo"]
    changed = [(a, b) for a, b in zip(minimal, deeper) if a["depth"] != b["depth"]]
    assert len(deeper) == len(minimal) and len(changed) == 1
    shallow, deep = changed[0]
    assert deep["depth"] == 256 and deep["ram_style"] in ("srl", "distributed") and deep["lut"] > shallow["lut"]


def test_the_estimate_records_and_reports_the_fifo_strategy_it_priced(tiny_flow):
    """estimates.json and the report say which --fifo the FIFO rows price: the same layers, FIFOs at the
    minimal depth for force_minimal_fifos, at the one-row allowance for distributed_sim."""
    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.estimate import Estimate
    from bnn_transfer.build_fpga.estimates import parse_estimates
    from bnn_transfer.build_fpga.report import fifo_note

    out, _ = tiny_flow
    board = get_board("pynq-z2")
    ests = {f: parse_estimates(out / "report", board, 100.0, out / "intermediate_models", fifo=f)
            for f in ("force_minimal_fifos", "distributed_sim")}
    for f, est in ests.items():
        assert est.fifo_strategy == f and Estimate.from_dict(est.to_dict()).fifo_strategy == f
        assert "`--fifo %s`" % f in fifo_note(est.fifo_strategy)
    minimal, sim = ([x["depth"] for x in e.interconnect if x["kind"] == "fifo"] for e in ests.values())
    assert ests["distributed_sim"].lut.layers == ests["force_minimal_fifos"].lut.layers
    assert set(minimal) == {2} and len(sim) == len(minimal) and sum(sim) > sum(minimal)
    assert fifo_note(None) != fifo_note("force_minimal_fifos")


def test_estimate_round_trips_through_its_json(tiny_flow):
    """estimates.json is the Estimate's fields: read back it is the same Estimate, the report's extra keys
    (fit, notes) ignored; a field added to the dataclass is written and read without listing it again."""
    from dataclasses import dataclass, fields
    from typing import Optional

    from bnn_transfer.build_fpga.estimate import Estimate, FoldingSearch

    _, est = tiny_flow
    est = replace(est, folding_search=FoldingSearch("lut", "LUT over", 3, 1234.5), folding_mode="search")
    data = json.loads(json.dumps(est.to_dict()))
    assert Estimate.from_dict(dict(data, fit={}, notes=[])) == est
    assert data["lut"] == {"used": est.lut.used, "available": 53200, "usable": est.lut.usable, "margin": 0.7,
                           "layers": est.lut.layers, "interconnect": est.lut.interconnect}
    assert "layers" not in data["ff"] and data["ff"]["used"] is None and "note" in data["ff"]
    assert data["folding_search"]["binding"] == "lut" and data["layers"][0]["node"] == est.layers[0].node
    assert "folding_search" not in replace(est, folding_search=None).to_dict()

    @dataclass(frozen=True)
    class Wider(Estimate):
        extra: Optional[int] = None

    wider = Wider(extra=7, **{f.name: getattr(est, f.name) for f in fields(Estimate)})
    assert wider.to_dict() == dict(est.to_dict(), extra=7)
    assert Wider.from_dict(wider.to_dict()) == wider


def test_only_the_8bit_layer_goes_onto_dsps(tiny_flow):
    """MapWideLayersToDsp: conv1 becomes FINN's RTL MVAU (no thresholds, INT2 narrow weights) with a
    standalone Thresholding after it; the XNOR layers stay HLS MVAUs with their thresholds."""
    from qonnx.custom_op.registry import getCustomOp

    out, est = tiny_flow
    model = final_model(out)
    mvaus = [n for n in model.graph.node if n.op_type.startswith("MVAU")]
    first = getCustomOp(mvaus[0])
    assert mvaus[0].op_type == "MVAU_rtl" and first.get_nodeattr("noActivation") == 1
    assert first.get_nodeattr("weightDataType") == "INT2" and model.get_initializer(mvaus[0].input[1]).min() == -1
    assert model.find_consumer(mvaus[0].output[0]).op_type == "Thresholding_rtl"
    assert all(n.op_type == "MVAU_hls" and getCustomOp(n).get_nodeattr("binaryXnorMode") == 1 and len(n.input) == 3
               for n in mvaus[1:])
    dsp = {ly.op_type: ly.dsp for ly in est.layers if ly.dsp}
    assert list(dsp) == ["MVAU_rtl"] and est.dsp.used == dsp["MVAU_rtl"]


def test_ddr_search_goes_on_past_targets_over_the_margins_until_one_fits(tmp_path, monkeypatch):
    """A narrower folding can need more memory than a wider one (deep, narrow weight memories pack badly
    into URAM): the search does not stop at a first target that is over the margins."""
    from test_flow import fake_estimate

    import bnn_transfer.build_fpga.folding as folding
    from bnn_transfer.build_fpga.boards import get_board
    from bnn_transfer.build_fpga.config import BuildConfig
    from bnn_transfer.build_fpga.estimate import Resource
    from bnn_transfer.build_fpga.steps import FOLDING_CONFIG

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / FOLDING_CONFIG).write_text("{}")
    bram = {250: 1214, 500: 400, 1000: 700}  # of 488 usable
    fps = {250: 250.0, 500: 340.0, 1000: 700.0}

    def refold(finn_dir, cfg, names):
        t = cfg.target_fps
        return replace(fake_estimate(get_board("zcu104")), fps=fps[t], bottleneck="fc2",
                       bram18=Resource(used=bram[t], usable=488, available=610, margin=0.8),
                       ddr={"fps": 328.0, "streamed_layers": ["fc1"], "weight_bytes_per_image": 1, "port": "p"})

    monkeypatch.setattr(folding, "refold", refold)
    fps[329] = 329.0
    bram[329] = 390
    est, rows = folding.search_ddr_bound(str(tmp_path), BuildConfig(board="zcu104"))
    assert [r["target_fps"] for r in rows] == [250, 500, 329]
    assert [r["fits_margins"] for r in rows] == [False, True, True]
    assert est.fps == 329.0 and est.folding_search.binding == "ddr"
