import hashlib
import json
import os
import re

import pytest
from fake_pynq import BACKBONE_DIGEST, DELETE, FEATURE_WIDTH, make_bundle, tiny_io, tiny_network

from bnn_transfer.host.bundle import ExternalWeight, check_head_compatible, load_bundle
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import finalize_manifest


def _rewrite_manifest(root, edit):
    """Apply ``edit`` to the manifest dict and re-hash, as a build_fpga bug (not tampering) would."""
    path = os.path.join(root, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    edit(m)
    finalize_manifest(root, m, "manifest.json")


def test_load_valid_bundle_exposes_the_manifest(tmp_path):
    root = make_bundle(tmp_path / "b")
    b = load_bundle(root)
    assert b.root == os.path.abspath(root)
    assert (b.board, b.preset, b.part, b.clock_mhz) == ("pynq-z2", "tiny", "xc7z020clg400-1", 100.0)
    assert b.preprocess == {"input_size": 8, "resize_longest": 9}
    assert b.input_shape == (8, 8, 3)
    assert b.feature_width == FEATURE_WIDTH
    assert b.backbone_digest == BACKBONE_DIGEST
    assert b.emulator_path == os.path.join(b.root, "emulator.npz") and os.path.isfile(b.emulator_path)
    assert b.bitfile_path == os.path.join(b.root, "bitfile", "finn-accel.bit")
    assert b.hwh_path == os.path.join(b.root, "bitfile", "finn-accel.hwh")
    assert b.onnx_path is None and b.external_weights == ()
    # FINN's "DataType['UINT8']" comes out canonical; shapes keep FINN's list-per-stream form
    assert b.io["idt"] == ["UINT8"] and b.io["odt"] == ["BIPOLAR"]
    assert b.io["ishape_folded"] == [[1, 8, 8, 1, 3]] and b.io["oshape_packed"] == [[1, 2, 1]]
    assert b.io["input_dma_name"] == ["idma0"] and b.io["number_of_external_weights"] == 0
    with open(os.path.join(root, "manifest.json"), "rb") as f:
        assert b.digest == hashlib.sha256(f.read()).hexdigest()
    assert b.head_meta() == {"feature_width": FEATURE_WIDTH, "preprocess": b.preprocess,
                             "backbone_digest": BACKBONE_DIGEST}


def test_bundle_without_bitfile(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b", with_bitfile=False))
    assert b.bitfile_path is None and b.hwh_path is None


def test_digest_changes_with_any_file(tmp_path):
    root = tmp_path / "b"
    before = load_bundle(make_bundle(root)).digest
    assert load_bundle(root).digest == before
    after = load_bundle(make_bundle(root, network=tiny_network(seed=1))).digest
    assert after != before


def test_finn_plus_spellings_are_accepted(tmp_path):
    io = tiny_io()
    io["idma_names"] = io.pop("input_dma_name")
    io["odma_names"] = io.pop("output_dma_name")
    io["odt"] = ["DataType['BIPOLAR']"]
    io["number_of_external_weights"] = "0"  # finn-plus's settings.json writes a string
    b = load_bundle(make_bundle(tmp_path / "b", io=io))
    assert b.io["input_dma_name"] == ["idma0"] and b.io["output_dma_name"] == ["odma0"]
    assert b.io["odt"] == ["BIPOLAR"] and b.io["number_of_external_weights"] == 0


def test_external_weights_are_listed_and_hash_checked(tmp_path):
    root = make_bundle(tmp_path / "b", external_weights=[("idma1", [1, 2, 3], 4)])
    b = load_bundle(root)
    assert b.external_weights == (ExternalWeight("idma1", os.path.join(b.root, "runtime_weights", "idma1.npy"), 4),)
    assert b.io["external_weights"] == [{"dma": "idma1", "file": "runtime_weights/idma1.npy", "repeats": 4}]
    with open(os.path.join(root, "runtime_weights", "idma1.npy"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x09")
    with pytest.raises(BnnError, match=r"idma1\.npy: sha256 does not match"):
        load_bundle(root)


@pytest.mark.parametrize("name", ["emulator.npz", "bitfile/finn-accel.bit", "bitfile/finn-accel.hwh"])
def test_tampered_file_is_refused_by_name(tmp_path, name):
    root = make_bundle(tmp_path / "b")
    with open(os.path.join(root, name), "ab") as f:
        f.write(b"\0")
    with pytest.raises(BnnError) as e:
        load_bundle(root)
    assert str(e.value).startswith(os.path.join(os.path.abspath(root), name) + ": sha256 does not match")
    assert "\n" not in str(e.value)


def test_deleted_file_and_missing_manifest(tmp_path):
    root = make_bundle(tmp_path / "b")
    os.unlink(os.path.join(root, "bitfile", "finn-accel.hwh"))
    with pytest.raises(BnnError, match=r"finn-accel\.hwh: file listed in .*manifest\.json is missing"):
        load_bundle(root)
    os.unlink(os.path.join(root, "manifest.json"))
    with pytest.raises(BnnError, match=r"manifest\.json: manifest not found"):
        load_bundle(root)
    with pytest.raises(BnnError, match="nowhere: bundle directory not found"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_for_another_board_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b", board="pynq-z1")
    with pytest.raises(BnnError, match=r"b: bundle was built for board 'pynq-z1', not 'pynq-z2'"):
        load_bundle(root, board="pynq-z2")
    assert load_bundle(root, board="Pynq-Z1").board == "pynq-z1"  # PYNQ's $BOARD spelling


def test_the_board_copy_may_leave_pc_out(tmp_path):
    """pc/ (the QONNX graph, PCs only) stays off the board: absent it is no tampering, present it is checked."""
    from bnn_transfer.host.backends import make_backend

    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"a QONNX graph")
    root = make_bundle(tmp_path / "b", onnx_file=str(graph))
    on_pc = load_bundle(root)
    assert on_pc.onnx_path == os.path.join(on_pc.root, "pc", "backbone.onnx")
    with open(os.path.join(root, "pc", "backbone.onnx"), "ab") as f:
        f.write(b"!")
    with pytest.raises(BnnError, match=r"pc/backbone\.onnx: sha256 does not match"):
        load_bundle(root)
    os.unlink(os.path.join(root, "pc", "backbone.onnx"))
    os.rmdir(os.path.join(root, "pc"))
    on_board = load_bundle(root)
    assert on_board.onnx_path is None and on_board.manifest["onnx"] == "pc/backbone.onnx"
    assert on_board.digest == on_pc.digest  # the same features cache on both copies
    with pytest.raises(BnnError, match=r"has no pc/backbone\.onnx \(the copy on a board leaves pc/ out\)"):
        make_backend("onnx", on_board)
    # only pc/ may be missing
    os.unlink(os.path.join(root, "emulator.npz"))
    with pytest.raises(BnnError, match=r"emulator\.npz: file listed in .*manifest\.json is missing"):
        load_bundle(root)


def _io(**changes):
    io = tiny_io()
    io.update(changes)
    return io


def _bad_external():
    io = tiny_io()
    io["number_of_external_weights"] = 1
    return io


@pytest.mark.parametrize("fields,message", [
    ({"kind": "export"}, r"is a 'export' manifest, expected 'bundle'"),
    ({"board": DELETE}, r"missing field 'board'"),
    ({"board": None}, r"field 'board' must be a non-empty string, got None"),
    ({"feature_width": 0}, r"field 'feature_width' must be a positive integer, got 0"),
    ({"feature_width": 16}, r"field 'io.oshape_normal' \[1, 12\] does not hold feature_width = 16 values"),
    ({"clock_mhz": -5}, r"field 'clock_mhz' must be a positive number"),
    ({"preprocess": {"input_size": 8}}, r"preprocess: preprocessing keys do not match"),
    ({"preprocess": {"input_size": 16, "resize_longest": 18}}, r"field 'io.ishape_normal' must be \[1, 16, 16, 3\]"),
    ({"backbone_digest": ""}, r"field 'backbone_digest' must be a non-empty string"),
    ({"io": _io(idt=["INT8"])}, r"field 'io.idt' must be UINT8"),
    ({"io": _io(odt=["UINT8"])}, r"field 'io.odt' must be BIPOLAR or BINARY"),
    ({"io": _io(odt=["FOO3"])}, r"field 'io.odt' holds an unusable datatype"),
    ({"io": _io(idt=["UINT8", "UINT8"])}, r"field 'io.idt' must be a list with one entry"),
    ({"io": _io(ishape_packed=[[1, 8, 8, 1, 1]])}, r"field 'io.ishape_packed' .* \(expected \[1, 8, 8, 1, 3\]\)"),
    ({"io": _io(oshape_folded=[[1, 2, 5]])}, r"field 'io.oshape_folded' \[1, 2, 5\] does not hold the 12 values"),
    ({"io": _io(oshape_normal=[[2, 12]])}, r"field 'io.oshape_normal' must have batch size 1"),
    ({"io": _io(output_dma_name=None)}, r"field 'io.output_dma_name' must be a list"),
    ({"io": _bad_external()}, r"field 'io.external_weights' must list 1 external weight"),
    ({"hwh": DELETE}, r"field 'hwh' must be set together with 'bitfile'"),  # absent counts as null
    ({"bitfile": None}, r"field 'bitfile' must be set together with 'hwh'"),
    ({"onnx": "backbone.onnx"}, r"field 'onnx' names 'backbone.onnx', which the manifest's 'files' does not list"),
    ({"emulator": "../emulator.npz"}, r"field 'emulator' must be a path inside the bundle"),
])
def test_schema_errors_name_the_manifest_and_field(tmp_path, fields, message):
    root = make_bundle(tmp_path / "b", **fields)
    with pytest.raises(BnnError) as e:
        load_bundle(root)
    msg = str(e.value)
    assert msg.startswith(os.path.join(os.path.abspath(root), "manifest.json") + ": "), msg
    assert "\n" not in msg
    assert re.search(message, msg), msg


def test_bitfile_and_hwh_must_pair_up(tmp_path):
    root = make_bundle(tmp_path / "b")
    _rewrite_manifest(root, lambda m: m.update(hwh=None))
    with pytest.raises(BnnError, match=r"field 'hwh' must be set together with 'bitfile'"):
        load_bundle(root)
    os.rename(os.path.join(root, "bitfile", "finn-accel.hwh"), os.path.join(root, "other.hwh"))
    _rewrite_manifest(root, lambda m: m.update(hwh="other.hwh"))
    with pytest.raises(BnnError, match=r"field 'hwh' 'other.hwh' must sit next to the bitfile"):
        load_bundle(root)


def test_head_compatibility(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b"))
    check_head_compatible(b, b.head_meta(), "head.npz")
    check_head_compatible(b, json.loads(json.dumps(b.head_meta())), "head.npz")  # as stored in a head file

    def meta(**changes):
        return dict(b.head_meta(), **changes)

    with pytest.raises(BnnError, match=r"^head\.npz: head was trained for 4096 features but the bundle .* "
                                       r"produces 12$"):
        check_head_compatible(b, meta(feature_width=4096), "head.npz")
    with pytest.raises(BnnError, match=r"^head\.npz: head was trained with preprocessing .*'input_size': 224.* but "
                                       r"the bundle .* uses"):
        check_head_compatible(b, meta(preprocess={"input_size": 224, "resize_longest": 256}), "head.npz")
    with pytest.raises(BnnError, match=r"^head\.npz: head was trained on backbone cdcdcdcdcdcd but the bundle .* "
                                       r"holds backbone abababababab$"):
        check_head_compatible(b, meta(backbone_digest="cd" * 32), "head.npz")
    incomplete = b.head_meta()
    del incomplete["backbone_digest"]
    with pytest.raises(BnnError, match=r"^head\.npz: head does not record its backbone_digest"):
        check_head_compatible(b, incomplete, "head.npz")
