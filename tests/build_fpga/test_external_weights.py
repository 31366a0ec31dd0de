"""External (DDR-streamed) weights: the per-layer plan, the DDR bound, and the IODMA byte layout,
checked against finn-plus's own code (InsertIODMA.get_mem_init + data_packing.to_external_tensor)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from bnn_transfer.build_fpga.external_weights import (
    WeightLayer,
    align_streams,
    assign_lutram,
    assign_ram_styles,
    check_external,
    ddr_bound,
    external_weight_bytes,
    memory_floor,
    plan,
    weight_dma_names,
)
from bnn_transfer.host.errors import BnnError

HAVE_FINN = importlib.util.find_spec("finn") is not None
needs_finn = pytest.mark.skipif(not HAVE_FINN, reason="needs finn-plus")


def paper_layers():
    """The paper preset's MVAUs (train/presets.py geometry; conv1 stores +-1 as INT2)."""
    return [
        WeightLayer("MVAU_hls_0", "conv1", 11 * 11 * 3, 96, 2, 55 * 55),
        WeightLayer("MVAU_hls_1", "conv2", 5 * 5 * 96, 256, 1, 27 * 27),
        WeightLayer("MVAU_hls_2", "conv3", 3 * 3 * 256, 384, 1, 13 * 13),
        WeightLayer("MVAU_hls_3", "conv4", 3 * 3 * 384, 384, 1, 13 * 13),
        WeightLayer("MVAU_hls_4", "conv5", 3 * 3 * 384, 256, 1, 13 * 13),
        WeightLayer("MVAU_hls_5", "fc1", 9216, 4096, 1, 1),
        WeightLayer("MVAU_hls_6", "fc2", 4096, 4096, 1, 1),
    ]


def _floors(layers, part):
    """FINN's fewest BRAM18/URAM per layer (memory_floor on an MVAU_hls node of its geometry)."""
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for r in layers:
        wdt = "INT2" if r.weight_bits == 2 else "BINARY"
        node = helper.make_node("MVAU_hls", ["x", "w"], ["y"], domain="finn.custom_op.fpgadataflow.hls", name=r.node,
                                MW=r.mw, MH=r.mh, PE=1, SIMD=1, inputDataType="BINARY", weightDataType=wdt,
                                outputDataType="BINARY", binaryXnorMode=1, noActivation=1, numInputVectors=[1])
        out[r.node] = memory_floor(getCustomOp(node), part)
    return out


@needs_finn
def test_memory_floor_is_finns_best_packing_over_the_foldings():
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    from bnn_transfer.build_fpga.boards import get_board

    part = get_board("pynq-z2").part
    node = helper.make_node("MVAU_hls", ["x", "w"], ["y"], domain="finn.custom_op.fpgadataflow.hls", MW=3456, MH=384,
                            PE=2, SIMD=128, inputDataType="BINARY", weightDataType="BINARY", outputDataType="BINARY",
                            binaryXnorMode=1, noActivation=1, numInputVectors=[1, 13, 13], ram_style="auto")
    inst = getCustomOp(node)
    at_folding = inst.bram_estimation(part)
    floor = memory_floor(inst, part)
    # conv4: 1,327,104 bits are exactly 72 full BRAM18s (PE 3 x SIMD 108 words, 4096 deep); FINN counts
    # 90 at PE 2 x SIMD 128 (1.25 BRAM18 deep, 8 wide) and 81 at PE = SIMD = 1
    assert at_folding == 90 and floor["bram18"] == 72
    assert floor["uram"] == 5  # 4096 deep x 324 bits: 5 URAMs 72 bits wide
    assert (inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD"), inst.get_nodeattr("ram_style")) == (2, 128, "auto")


@needs_finn
def test_plan_streams_what_does_not_fit_on_chip():
    from bnn_transfer.build_fpga.boards import get_board

    def streamed(board):
        b = get_board(board)
        return [r.layer for r in plan(paper_layers(), b, _floors(paper_layers(), b.part)) if r.mem_mode == "external"]

    assert streamed("zcu104") == ["fc1"]  # fc2 fits its 57 URAMs
    assert streamed("kv260") == ["fc1", "fc2"]
    # the conv layers' 206 BRAM18 at FINN's best packing fit the Pynq-Z2's usable 224
    assert streamed("pynq-z2") == ["fc1", "fc2"]
    # small nets stay on chip
    small = [replace(r, mw=max(r.mw // 16, 1)) for r in paper_layers()]
    b = get_board("zcu104")
    assert all(r.mem_mode == "internal_decoupled" for r in plan(small, b, _floors(small, b.part)))
    # the input is not changed
    assert all(r.mem_mode == "internal_decoupled" for r in paper_layers())


@needs_finn
def test_plan_follows_finns_estimate_not_a_fixed_share():
    """The same weight bits fit or not by FINN's BRAM18 count: all 224 usable BRAM18 may hold weights
    (a fixed share of the bits, the 85% rule before, refused 3.8 Mbit on the Pynq-Z2)."""
    from bnn_transfer.build_fpga.boards import get_board

    z2 = get_board("pynq-z2")
    rows = paper_layers()
    floors = {r.node: {"bram18": 2000 if r.streamable else 224 // 5 + (r.layer == "conv1") * (224 % 5), "uram": 0}
              for r in rows}
    assert sum(f["bram18"] for r, f in zip(rows, floors.values()) if not r.streamable) == 224
    assert [r.layer for r in plan(rows, z2, floors) if r.mem_mode == "external"] == ["fc1", "fc2"]
    floors["MVAU_hls_3"]["bram18"] += 1
    with pytest.raises(BnnError, match=r"^pynq-z2: with every fully connected layer streamed from DDR, conv1, conv2, "
                                       r"conv3, conv4, conv5 still need 225 BRAM18 for their weights at FINN's best "
                                       r"packing \(conv1 48, conv2 44, conv3 44, conv4 45, conv5 44\), more than the "
                                       r"usable 224 BRAM18 and 0 URAM"):
        plan(rows, z2, floors)


@needs_finn
def test_plan_refuses_when_the_conv_layers_alone_do_not_fit():
    from bnn_transfer.build_fpga.boards import get_board

    z2 = get_board("pynq-z2")
    rows = [replace(r, mw=r.mw * 2) if r.layer == "conv4" else r for r in paper_layers()]
    with pytest.raises(BnnError, match=r"^pynq-z2: .* conv1, conv2, conv3, conv4, conv5 still need 278 BRAM18 .*"
                                       r"conv4 144"):
        plan(rows, z2, _floors(rows, z2.part))


def test_lutram_takes_the_layers_with_the_fewest_luts_per_bram():
    costs = [{"node": "conv1", "bram18": 7, "lut": 1210}, {"node": "conv2", "bram18": 54, "lut": 9600},
             {"node": "conv4", "bram18": 90, "lut": 20736}]
    assert assign_lutram(costs, bram_over=0, lut_left=50000) == []  # BRAM within its margin: nothing moves
    assert assign_lutram(costs, bram_over=5, lut_left=50000) == ["conv1"]  # 173 LUT per BRAM18
    assert assign_lutram(costs, bram_over=8, lut_left=50000) == ["conv1", "conv2"]  # 178 next
    assert assign_lutram(costs, bram_over=8, lut_left=9000) == ["conv1"]  # conv2 would leave the LUT margin


@needs_finn
def test_ram_styles_move_the_largest_bram_users_to_uram():
    from bnn_transfer.build_fpga.boards import get_board

    kv = get_board("kv260")  # 51 usable URAM
    costs = [{"node": "a", "bram18": 120, "uram": 6}, {"node": "b", "bram18": 100, "uram": 40},
             {"node": "c", "bram18": 30, "uram": 9}, {"node": "d", "bram18": 4, "uram": 0},
             {"node": "e", "bram18": 2, "uram": 3}]
    assert assign_ram_styles(costs, kv) == {"a": "ultra", "b": "ultra", "c": "auto", "d": "auto", "e": "auto"}
    costs[0]["uram"] = 60  # more than the board has: the next ones go
    assert assign_ram_styles(costs, kv) == {"a": "auto", "b": "ultra", "c": "ultra", "d": "auto", "e": "auto"}
    assert set(assign_ram_styles(costs, get_board("pynq-z2")).values()) == {"auto"}  # no URAM at all
    # FIFOs that take 4 URAM leave 47: c (9) no longer fits beside b (40)
    assert assign_ram_styles(costs, kv, reserved_uram=4) == {"a": "auto", "b": "ultra", "c": "auto", "d": "auto",
                                                            "e": "auto"}


def test_streams_are_widened_to_whole_bytes():
    rows = paper_layers()
    rows[5].mem_mode = "external"
    folding = {r.node: {"PE": 1, "SIMD": 1} for r in rows}
    assert align_streams(rows, folding) == {"MVAU_hls_5": {"PE": 1, "SIMD": 8}}
    folding["MVAU_hls_5"] = {"PE": 4, "SIMD": 36}
    assert align_streams(rows, folding) == {}
    folding["MVAU_hls_5"] = {"PE": 1, "SIMD": 9}
    assert align_streams(rows, folding) == {"MVAU_hls_5": {"PE": 1, "SIMD": 16}}


def test_external_weights_on_a_conv_layer_are_refused():
    rows = paper_layers()
    rows[5].mem_mode = "external"
    check_external(rows, "fold.json")  # fc1 streams: fine
    rows[2].mem_mode = "external"
    with pytest.raises(BnnError, match=r"^fold\.json: layer conv3 \(MVAU_hls_2\) has mem_mode external, but FINN "
                                       r"streams external weights once per image and this conv layer reads its "
                                       r"weights 169 times per image"):
        check_external(rows, "fold.json")


@needs_finn
def test_ddr_bound_is_the_shell_port_over_the_bytes_per_image():
    from bnn_transfer.build_fpga.boards import get_board

    streams = [{"layer": "fc1", "bytes": 9216 * 4096 // 8, "repeats": 1},
               {"layer": "fc2", "bytes": 4096 * 4096 // 8, "repeats": 1}]
    b = ddr_bound(streams, get_board("kv260"), 100.0, in_bytes=224 * 224 * 3, out_bytes=4096 // 8)
    assert b["streamed_layers"] == ["fc1", "fc2"]
    assert b["weight_bytes_per_image"] == (9216 * 4096 + 4096 * 4096) // 8
    assert b["bytes_per_s"] == 128 / 8 * 100e6  # the 128-bit port at 100 MHz, below DDR4's 19.2 GB/s
    assert b["fps"] == pytest.approx(1.6e9 / (b["weight_bytes_per_image"] + 224 * 224 * 3 + 512))
    assert ddr_bound(streams, get_board("kv260"), 150.0, 1, 1)["fps"] == pytest.approx(b["fps"] * 1.5, rel=0.03)
    assert ddr_bound(streams, get_board("pynq-z2"), 100.0, 1, 1)["bytes_per_s"] == 64 / 8 * 100e6
    assert ddr_bound([], get_board("kv260"), 100.0, 1, 1)["fps"] is None


@needs_finn
@pytest.mark.parametrize("dtype,pe,simd", [("BINARY", 1, 8), ("BINARY", 4, 16), ("BINARY", 16, 32),
                                           ("INT2", 2, 4), ("BIPOLAR", 8, 8)])
def test_layout_equals_finns_iodma_layout(dtype, pe, simd):
    from finn.transformation.fpgadataflow.insert_iodma import InsertIODMA
    from finn.util.data_packing import to_external_tensor
    from qonnx.core.datatype import DataType

    rng = np.random.default_rng(pe * simd)
    dt = DataType[dtype]
    w = rng.integers(dt.min(), dt.max() + 1, size=(64, 32)).astype(np.float32)
    if dtype == "BIPOLAR":
        w = np.where(w > 0, 1, -1).astype(np.float32)
    finn = to_external_tensor(InsertIODMA(128).get_mem_init(w, pe, simd), dt)
    ours = external_weight_bytes(w, pe, simd, dtype)
    assert ours.dtype == np.uint8 and np.array_equal(ours, finn)
    # a different folding is a different stream
    assert not np.array_equal(external_weight_bytes(w, pe * 2, simd, dtype), finn)


def _mvau(name, inp, out, mw, mh, pe, simd, mem_mode):
    from onnx import helper

    return helper.make_node(
        "MVAU_hls", [inp, name + "_w"], [out], domain="finn.custom_op.fpgadataflow.hls", backend="fpgadataflow",
        name=name, MW=mw, MH=mh, PE=pe, SIMD=simd, inputDataType="BINARY", weightDataType="BINARY",
        outputDataType="BINARY", binaryXnorMode=1, noActivation=1, numInputVectors=[1], mem_mode=mem_mode)


@needs_finn
def test_dma_names_follow_finns_partitions(tmp_path):
    """Run ZynqBuild's graph transforms (InsertIODMA, Floorplan, CreateDataflowPartition) on three FC MVAUs,
    two streamed: MakeZYNQProject names the source partitions idma0, idma1, ... in graph order, and they
    feed the streamed layers in the order weight_dma_names predicts, the image last (idma2). InsertIODMA
    alone puts the last layer's DMA first: names read off that graph would swap fcA's and fcC's weights."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.util.basic import qonnx_make_model

    from bnn_transfer.build_fpga.finn_env import finn_session

    with finn_session(tmp_path / "fb"):
        from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
        from finn.transformation.fpgadataflow.floorplan import Floorplan
        from finn.transformation.fpgadataflow.insert_iodma import InsertIODMA

        nodes = [_mvau("fcA", "x", "a", 64, 32, 4, 8, "external"),
                 _mvau("fcB", "a", "b", 32, 32, 4, 8, "internal_decoupled"),
                 _mvau("fcC", "b", "y", 32, 16, 4, 8, "external")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
        model = ModelWrapper(qonnx_make_model(graph))
        rng = np.random.default_rng(0)
        for n in nodes:
            mw, mh = [a.i for a in n.attribute if a.name == "MW"][0], [a.i for a in n.attribute if a.name == "MH"][0]
            model.set_initializer(n.input[1], rng.integers(0, 2, size=(mw, mh)).astype(np.float32))
            model.set_tensor_datatype(n.input[1], DataType["BINARY"])
        for t in ("x", "a", "b", "y"):
            model.set_tensor_datatype(t, DataType["BINARY"])
        for transform in (InsertIODMA(128), Floorplan(), CreateDataflowPartition(partition_model_dir=str(tmp_path))):
            model = model.transform(transform).transform(GiveUniqueNodeNames()).transform(GiveReadableTensorNames())
        # as MakeZYNQProject tells them: a partition without a producer is a source, named idma<k>
        sources = [n for n in model.graph.node if not n.input or model.find_producer(n.input[0]) is None]
        compute = [n for n in model.graph.node if n not in sources and model.find_consumers(n.output[0])]
        assert len(sources) == 3 and len(compute) == 1
        inner = ModelWrapper(getCustomOp(compute[0]).get_nodeattr("model"))
        mvaus = [n.name for n in inner.graph.node]  # fcA, fcB, fcC renamed MVAU_hls_0..2
        fed = {}
        for outer, inner_input in zip(compute[0].input, inner.graph.input):
            k = [s.name for s in sources].index(model.find_producer(outer).name)
            fed["idma%d" % k] = inner.find_consumer(inner_input.name)
        # the image (the first MVAU's data input) comes from the last source partition
        assert fed["idma2"].name == mvaus[0] and fed["idma2"].input[0] == inner.graph.input[0].name
        got = {dma: ["fcA", "fcB", "fcC"][mvaus.index(node.name)] for dma, node in fed.items() if dma != "idma2"}
        assert got == dict(zip(weight_dma_names(2), ["fcA", "fcC"]))


def test_the_search_keeps_the_smallest_folding_at_the_ddr_bound():
    from bnn_transfer.build_fpga.folding import pick_best

    def row(target, fps, ddr, fits=True):
        return {"target_fps": target, "fps": fps, "ddr_fps": ddr, "fits_margins": fits,
                "fps_effective": fps if ddr is None else min(fps, ddr)}

    # zcu104-like: both 500 and 329 reach the DDR bound (which differs by output padding): 329 is built
    rows = [row(250, 250.0, 328.9), row(500, 501.0, 329.0), row(329, 334.0, 328.9)]
    assert pick_best(rows)["target_fps"] == 329
    # compute-bound rows: the fastest fitting one, the smaller target on a tie
    rows = [row(1000, 1017.0, None), row(2000, 2035.0, None), row(2500, 2035.0, None), row(4000, 4000.0, None, False)]
    assert pick_best(rows)["target_fps"] == 2000
    assert pick_best([row(250, 250.0, 100.0, False), row(1, 20.0, 100.0, False)])["target_fps"] == 1


def test_a_hardware_build_whose_weight_streams_differ_from_the_bundles_is_refused(tmp_path):
    """The bundle's weight files are ours (FINN's IODMA layout re-implemented): after a hardware build they
    must be exactly the ones FINN's driver generated, DMA for DMA and byte for byte."""
    from bnn_transfer.build_fpga.build import _weights_loaded_at_run_time
    from bnn_transfer.build_fpga.finn_flow import FlowError

    (tmp_path / "runtime_weights").mkdir()
    data = np.arange(32, dtype=np.uint8)
    streams = [{"dma": "idma0", "layer": "fc1", "data": data}]
    hw = {"driver_dir": tmp_path}
    with pytest.raises(FlowError, match=r"FINN's driver streams weights through no DMA, the bundle through idma0$"):
        _weights_loaded_at_run_time(hw, streams, None)
    np.save(tmp_path / "runtime_weights" / "idma0.npy", data[::-1].copy())
    with pytest.raises(FlowError, match=r"FINN's weights for idma0 \(fc1\) differ from the bundle's$"):
        _weights_loaded_at_run_time(hw, streams, None)
