"""Crafted artifacts: manifests that point outside their root, checkpoints and .npz files that lie."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import finalize_manifest, load_manifest, new_manifest, sha256_file
from bnn_transfer.host.npzfile import check_npz, open_npz
from bnn_transfer.train.checkpoint import load_checkpoint, save_checkpoint
from tests.host.fake_pynq import make_bundle


def artifact(root, files):
    os.makedirs(root, exist_ok=True)
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    finalize_manifest(str(root), new_manifest("test", "thing"), "m.json")
    return str(root)


def edit_manifest(root, edit):
    path = os.path.join(root, "m.json")
    m = json.load(open(path))
    edit(m)
    json.dump(m, open(path, "w"))


@pytest.mark.parametrize("name", ["/etc/passwd", "/proc/self/environ", "../../x", "a/../../x", "./a.bin", "a//b", ""])
def test_manifest_paths_outside_the_root_are_refused_unread(tmp_path, name):
    root = artifact(tmp_path / "art", {"a.bin": b"a"})
    target = "/etc/passwd" if name.startswith("/") else None
    digest = sha256_file(target) if target and os.path.exists(target) else "0" * 64  # even a matching hash
    edit_manifest(root, lambda m: m["files"].update({name: digest}))
    with pytest.raises(BnnError, match=r"is not a relative path inside"):
        load_manifest(root, "m.json")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    root = artifact(tmp_path / "art", {"a.bin": b"a"})
    os.symlink(str(outside), os.path.join(root, "e.npz"))
    edit_manifest(root, lambda m: m["files"].update({"e.npz": sha256_file(str(outside))}))
    with pytest.raises(BnnError, match=r"e\.npz: file listed in .*m\.json resolves outside"):
        load_manifest(root, "m.json")


def test_listed_directory_and_files_as_a_list_are_one_line_errors(tmp_path):
    root = artifact(tmp_path / "art", {"a.bin": b"a"})
    os.mkdir(os.path.join(root, "d"))
    edit_manifest(root, lambda m: m["files"].update({"d": "0" * 64}))
    with pytest.raises(BnnError, match=r"d: file listed in .* is not a regular file"):
        load_manifest(root, "m.json")
    edit_manifest(root, lambda m: m.update(files=["a.bin"]))
    with pytest.raises(BnnError, match=r"'files' must map file names to sha256 digests, got a list"):
        load_manifest(root, "m.json")


def test_bundle_with_an_escaping_emulator_is_refused(tmp_path):
    from bnn_transfer.host.bundle import load_bundle

    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "evil.npz"
    os.replace(os.path.join(root, "emulator.npz"), str(outside))
    os.symlink(str(outside), os.path.join(root, "emulator.npz"))
    with pytest.raises(BnnError, match="resolves outside"):
        load_bundle(root)


def good_state():
    from bnn_transfer.train.models import ModelConfig, build_model

    cfg = ModelConfig(preset="tiny", num_classes=3)
    return {"mode": "fit", "model_config": cfg.to_dict(), "classes": ["a", "b", "c"],
            "preprocess": {"input_size": 32, "resize_longest": 37}, "epoch": 1,
            "model": build_model(cfg).state_dict(), "metrics": {}}


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(epoch="7"), "field 'epoch' is a str, expected int"),
    (lambda s: s.update(epoch=-3), "field 'epoch' is -3, expected >= 0"),
    (lambda s: s.update(classes={"a": 1}), "field 'classes' is a dict, expected list"),
    (lambda s: s.update(classes=[1, 2, 3]), "'classes' must be a non-empty list of names"),
    (lambda s: s["model_config"].update(num_classes=-5), "num_classes must be a positive integer, got -5"),
    (lambda s: s["model_config"].update(preset=["tiny"]), "preset must be a string"),
    (lambda s: s["model_config"].update(num_classes=4), "3 class names for 4 outputs"),
    (lambda s: s.update(preprocess={"input_size": -1, "resize_longest": 37}), "input_size must be a positive"),
    (lambda s: s.update(model={"w": [1, 2]}), "'model' must map parameter names to tensors"),
])
def test_crafted_checkpoint_fields_are_one_line_errors(tmp_path, edit, message):
    state = good_state()
    edit(state)
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(BnnError, match=r"checkpoint\.pt: .*" + _re(message)):
        load_checkpoint(tmp_path)


def _re(text):
    import re

    return re.escape(text)


def test_zero_byte_and_pickle_checkpoints(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(BnnError, match=r"checkpoint\.pt: not a readable checkpoint \(\S"):
        load_checkpoint(tmp_path / "z")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch %s" % (tmp_path / "pwned"),))

    torch.save({"format": "bnn-transfer/checkpoint/v1", "x": Payload()}, str(tmp_path / "evil.pt"))
    with pytest.raises(BnnError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "GLOBAL posix.system" in str(e.value) and "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    import bnn_transfer.train.checkpoint as ck
    save_checkpoint(tmp_path / "checkpoint.pt", good_state())

    class Full(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "open", lambda p, mode: Full(p, "w"), raising=False)
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path / "checkpoint.pt", dict(good_state(), epoch=2))
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]


def npz_with_header(path, shape, data_bytes, name="junk"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr(name + ".npy", buf.getvalue() + b"\0" * data_bytes)


def test_npz_that_lies_about_its_size_is_refused_before_allocation(tmp_path):
    npz_with_header(tmp_path / "h.npz", (270_000_000,), 1 << 20)
    with pytest.raises(ValueError, match=r"junk\.npy declares float32 \(270000000,\) \(1080000000 bytes\) but holds"):
        check_npz(str(tmp_path / "h.npz"))
    from bnn_transfer.host.heads import load_head

    with pytest.raises(BnnError, match=r"h\.npz: .*junk\.npy declares float32"):
        load_head(str(tmp_path / "h.npz"))


def test_npz_members_limits(tmp_path):
    np.savez(str(tmp_path / "ok.npz"), a=np.zeros(10, np.float32), s=np.array("x"))
    with open_npz(str(tmp_path / "ok.npz"), names={"a", "s"}) as z:
        assert z["a"].shape == (10,)
    with pytest.raises(ValueError, match="unexpected member 's.npy'"):
        check_npz(str(tmp_path / "ok.npz"), names={"a"})
    with pytest.raises(ValueError, match="members declare .* more than the 16 such a file may hold"):
        check_npz(str(tmp_path / "ok.npz"), max_bytes=16)
    with zipfile.ZipFile(str(tmp_path / "obj.npz"), "w") as zf:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        zf.writestr("o.npy", buf.getvalue() + b"\0" * 8)
    with pytest.raises(ValueError, match="holds Python objects"):
        check_npz(str(tmp_path / "obj.npz"))


@pytest.mark.parametrize("field, value, message", [
    ("feature_width", "abc", "field 'feature_width' must be a positive integer"),
    ("preprocess", {"input_size": "x", "resize_longest": 3}, "input_size must be a positive integer"),
    ("classes", 7, "field 'classes' must be a list of class names"),
    ("preset", ["tiny"], "field 'preset' must be a preset name"),
    ("layers", "zz", "field 'layers' must be a list of layer descriptions"),
])
def test_crafted_export_manifest_fields_are_one_line_errors(export_dir, tmp_path, field, value, message):
    import shutil

    from bnn_transfer.export.backbone import load_export

    _, _, export = export_dir
    copy = str(tmp_path / "export")
    shutil.copytree(str(export), copy)
    m = json.load(open(os.path.join(copy, "export.json")))
    m[field] = value
    json.dump(m, open(os.path.join(copy, "export.json"), "w"))
    with pytest.raises(BnnError, match=r"export\.json: .*" + _re(message)):
        load_export(copy)


@pytest.mark.parametrize("variant,params", [
    ("float", {"W": np.full((8, 2), 3e38, np.float32), "b": np.zeros(2, np.float32)}),
    ("binary", {"W": np.ones((8, 2), np.int8), "scale": np.full(2, 1e30, np.float32), "bias": np.zeros(2, np.float32)}),
    ("mlp", {"W1": np.full((8, 4), 1e20, np.float32), "b1": np.zeros(4, np.float32),
             "W2": np.full((4, 2), 1e20, np.float32), "b2": np.zeros(2, np.float32)}),
])
def test_heads_whose_logits_can_overflow_are_refused(variant, params):
    """Finite weights of 3e38 passed the NaN check, then every probability was NaN (not JSON)."""
    from bnn_transfer.host.heads.head import Head

    with pytest.raises(BnnError, match=r"^head: weights so large that a logit can reach .*: its probabilities "
                                       r"would be NaN$"):
        Head(variant, ["a", "b"], 8, params)
    small = {k: (v if v.dtype == np.int8 else np.ones_like(v)) for k, v in params.items()}
    Head(variant, ["a", "b"], 8, small)  # the bound is on magnitude, not on the variant


def test_no_nan_reaches_a_json_line():
    from bnn_transfer.host.commands import _print_json, _r

    assert _r(float("nan")) is None and _r(float("inf")) is None and _r(0.123456) == 0.1235
    with pytest.raises(ValueError):
        _print_json({"prob": float("nan")})


def test_json_that_would_parse_into_too_many_values_is_refused_unparsed(tmp_path):
    """A 63 MB manifest under the byte cap cost 1.7 GB of RSS to parse: a Pynq-Z2 has 512 MB."""
    import resource

    from bnn_transfer.host.inputs import MAX_JSON_VALUES, loads_json

    assert loads_json(b'{"a": [1, 2, {"b": 3}]}') == {"a": [1, 2, {"b": 3}]}
    big = tmp_path / "manifest.json"
    big.write_bytes(b'{"format": "bnn-transfer/manifest/v1", "pad": [' + b"0," * MAX_JSON_VALUES + b"0]}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BnnError, match=r"manifest\.json: cannot read manifest \(holds up to \d+ values, more than "
                                       r"the 1000000 this flow accepts\)"):
        load_manifest(str(tmp_path), "manifest.json")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 << 10  # KB: far below parsing it


def test_a_graph_whose_external_data_points_outside_is_one_line(tmp_path):
    """build_fpga read backbone.onnx with qonnx directly: onnx's refusal ended as exit 1 'internal error'."""
    from onnx import TensorProto, helper

    from bnn_transfer.host.backends.onnx import load_qonnx

    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / "backbone.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(BnnError, match=r"backbone\.onnx: cannot read the QONNX graph \("):
        load_qonnx(str(path))
