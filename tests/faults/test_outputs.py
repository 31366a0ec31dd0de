"""Outputs: nothing the flow did not write is replaced, a killed run's leftovers are cleaned, one writer at a time."""

import json
import os
import subprocess
import sys

import pytest

from bnn_transfer.host.atomic import output_lock
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import atomic_dir, check_replaceable, finalize_manifest, new_manifest
from tests.faults.fsutil import snapshot


def write_artifact(root, kind="backbone", name="export.json", files=None):
    with atomic_dir(str(root)) as tmp:
        for rel, data in (files or {"a.bin": b"a"}).items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)) or tmp, exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data)
        finalize_manifest(tmp, new_manifest("test", kind), name)


def test_foreign_directory_is_refused_before_the_work_and_left_intact(tmp_path):
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "x").write_text("also mine")
    before = snapshot(tmp_path)
    ran = []
    with pytest.raises(BnnError, match=r"userdir: exists, is not empty and holds no bnn-transfer manifest"):
        with atomic_dir(str(user)):
            ran.append(1)
    assert not ran and snapshot(tmp_path) == before


def test_artifact_of_another_kind_is_refused(tmp_path):
    run = tmp_path / "run"
    write_artifact(run, kind="run", name="run.json")
    before = snapshot(tmp_path)
    with pytest.raises(BnnError, match=r"run: exists and is not a 'backbone' artifact"):
        write_artifact(run, kind="backbone", name="export.json")
    assert snapshot(tmp_path) == before
    with pytest.raises(BnnError, match=r"is not a 'backbone' artifact"):
        check_replaceable(str(run), "export.json", "backbone")


def test_own_artifact_is_replaced_but_not_with_a_user_file_inside(tmp_path):
    out = tmp_path / "export"
    write_artifact(out, files={"a.bin": b"1", "sub/b.bin": b"2"})
    (out / "sub" / "__pycache__").mkdir()
    (out / "sub" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"cache")
    write_artifact(out, files={"a.bin": b"new"})  # caches do not block a rebuild
    assert (out / "a.bin").read_bytes() == b"new" and not (out / "sub").exists()
    (out / "mine.txt").write_text("user's")
    with pytest.raises(BnnError, match=r"mine\.txt: was not written by this flow \(not in export\.json\)"):
        write_artifact(out, files={"a.bin": b"newer"})
    assert (out / "a.bin").read_bytes() == b"new" and (out / "mine.txt").read_text() == "user's"


def test_unhashed_files_count_as_ours(tmp_path):
    out = tmp_path / "bundle"
    with atomic_dir(str(out)) as tmp:
        os.makedirs(os.path.join(tmp, "notebooks"))
        open(os.path.join(tmp, "notebooks", "n.ipynb"), "w").write("{}")
        open(os.path.join(tmp, "e.npz"), "w").write("x")
        m = finalize_manifest(tmp, new_manifest("test", "bundle"), "manifest.json", files=["e.npz"])
    assert m["unhashed"] == ["notebooks/n.ipynb"]
    check_replaceable(str(out), "manifest.json", "bundle")


def test_empty_directory_and_file_targets(tmp_path):
    (tmp_path / "empty").mkdir()
    write_artifact(tmp_path / "empty")
    assert (tmp_path / "empty" / "export.json").exists()
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(BnnError, match="afile: exists and is not a directory"):
        write_artifact(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "keep"


def test_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_artifact(tmp_path / "out", files={"d/a.bin": b"1"})
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_second_writer_is_refused_and_lock_dies_with_its_holder(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, %r); from host.atomic import output_lock\n"
         "with output_lock(%r):\n    print('held', flush=True); time.sleep(60)" % (os.getcwd(), str(out))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BnnError, match=r"out: another command is writing it right now"):
            write_artifact(out)
    finally:
        holder.kill()
        holder.wait()
    write_artifact(out)  # the kernel released the dead holder's lock
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_leftovers_of_a_killed_writer_are_cleaned_or_restored(tmp_path):
    out = tmp_path / "export"
    write_artifact(out, files={"a.bin": b"good"})
    (tmp_path / ".export.bnn-tmp-abc").mkdir()  # killed while building the new one
    (tmp_path / ".export.bnn-tmp-abc" / "half").write_text("x")
    (out / ".a.bin.bnn-tmp-xyz").write_text("half-written file")
    with output_lock(str(out)):
        pass
    assert sorted(os.listdir(tmp_path)) == ["export"] and sorted(os.listdir(out)) == ["a.bin", "export.json"]
    os.rename(out, tmp_path / ".export.bnn-old-q1")  # killed between moving the old one aside and the swap
    with output_lock(str(out)):
        pass
    assert (out / "a.bin").read_bytes() == b"good" and sorted(os.listdir(tmp_path)) == ["export"]
    other = tmp_path / ".exports.bnn-tmp-1"  # another output's temporary: not ours to touch
    other.mkdir()
    with output_lock(str(out)):
        pass
    assert other.exists()


def test_failed_block_keeps_the_earlier_artifact(tmp_path):
    out = tmp_path / "export"
    write_artifact(out, files={"a.bin": b"good"})
    with pytest.raises(RuntimeError):
        with atomic_dir(str(out)) as tmp:
            open(os.path.join(tmp, "a.bin"), "w").write("bad")
            raise RuntimeError("boom")
    assert (out / "a.bin").read_bytes() == b"good" and sorted(os.listdir(tmp_path)) == ["export"]
    assert json.loads((out / "export.json").read_text())["kind"] == "backbone"


def test_pngs_are_replaced_only_when_this_flow_wrote_them(tmp_path):
    """Every PNG writer marks its file (matplotlib's and the plain fallback); a user's file is refused."""
    import numpy as np

    from bnn_transfer.host.report import check_replaceable_png, png_bytes, save_confusion_png

    ours = tmp_path / "cm.png"
    save_confusion_png(str(ours), np.eye(3, dtype=np.int64))
    check_replaceable_png(str(ours))
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    check_replaceable_png(str(plain))
    from PIL import Image

    Image.new("RGB", (4, 4)).save(str(tmp_path / "photo.png"))  # a PNG, but not ours
    (tmp_path / "precious.txt").write_text("mine")
    for name in ("photo.png", "precious.txt"):
        with pytest.raises(BnnError, match=r"%s: exists and is not a PNG written by this flow; refusing" % name):
            check_replaceable_png(str(tmp_path / name))
    check_replaceable_png(str(tmp_path / "new.png"))


def test_eval_and_teach_refuse_a_users_file_before_any_work(tmp_path):
    from tests.host.fake_pynq import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    head = tmp_path / "head.npz"
    synth = ["--dataset", "synthetic-transfer", "--option", "num_classes=3", "--option", "n_train_per_class=4",
             "--option", "n_test_per_class=2", "--backend", "emulator", "--quiet", "--no-cache"]

    def host(*args):
        return subprocess.run([sys.executable, "-m", "host", *map(str, args)], capture_output=True, text=True,
                              timeout=120, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=os.getcwd()))

    assert host("fit", "--bundle", bundle, "--out", head, *synth).returncode == 0
    before = snapshot(tmp_path)
    r = host("eval", "--bundle", bundle, "--head", head, "--confusion", precious, *synth)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: %s: exists and is not a PNG written by this flow; refusing to replace it (choose another output)"
        % precious]
    r = host("teach", "--bundle", bundle, "--out", precious, "--class", "a", "--folder", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: %s: exists and is not a head written by this flow; refusing to replace it (choose another output)"
        % precious]
    assert snapshot(tmp_path) == before and precious.read_text() == "mine"
