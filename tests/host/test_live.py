"""host.live, host.sources, host.teach and `python -m host live/teach`: frames, the timed loop, examples kept packed,
bad input as one line."""

import json
import sys

import numpy as np
import pytest
from fake_pynq import colour_network, make_bundle

from bnn_transfer.host.__main__ import main
from bnn_transfer.host.backends import make_backend
from bnn_transfer.host.benchmark import BenchConfig, bench_live
from bnn_transfer.host.bundle import load_bundle
from bnn_transfer.host.cli import run_cli
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.heads import load_head
from bnn_transfer.host.live import STAGES
from bnn_transfer.host.sources import (
    CameraSource,
    FolderSource,
    FrameError,
    FramesSource,
    SourceUnavailable,
    check_frame,
    decode_frame,
    open_source,
)
from bnn_transfer.host.synthetic import open_synthetic
from bnn_transfer.host.teach import ExampleStore, Teacher

CLASSES = 3
PER_CLASS = 8


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle whose features carry colour, so that a head taught from a few frames beats chance."""
    network, io, width = colour_network()
    root = make_bundle(tmp_path_factory.mktemp("live") / "bundle", with_bitfile=False, network=network, io=io,
                       feature_width=width)
    return load_bundle(root)


@pytest.fixture(scope="module")
def scenes():
    """Training and test frames of the first classes of synthetic-transfer, per class."""
    opts = dict(num_classes=CLASSES, image_size=32)
    train = open_synthetic("synthetic-transfer", "train", n_train_per_class=PER_CLASS, **opts)
    test = open_synthetic("synthetic-transfer", "test", n_test_per_class=10, **opts)
    return {"classes": train.classes,
            "train": [[train.load(i) for i in np.flatnonzero(train.labels == c)] for c in range(CLASSES)],
            "test": [(test.load(i), int(test.labels[i])) for i in range(len(test))]}


class FakeCv2:
    """OpenCV's VideoCapture for one camera at index 0 that shows ``frames`` (BGR) in turn."""

    def __init__(self, frames, opened=True):
        self.frames, self.opened, self.released = list(frames), opened, 0

    def VideoCapture(self, index):
        cv2 = self

        class Capture:
            def isOpened(self):
                return cv2.opened and index == 0

            def read(self):
                return (True, cv2.frames.pop(0)) if cv2.frames else (False, None)

            def release(self):
                cv2.released += 1

        return Capture()


def save_pngs(folder, frames):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        Image.fromarray(f).save(str(folder / ("%02d.png" % k)))


# ------------------------------------------------------------------------------------------- frames


def test_check_frame_accepts_camera_modes_and_refuses_the_rest():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(check_frame(rgb), rgb)
    assert np.array_equal(check_frame(rgb, bgr=True), rgb[:, :, ::-1])
    grey = np.full((2, 3), 7, np.uint8)
    assert check_frame(grey).shape == (2, 3, 3) and (check_frame(grey) == 7).all()
    rgba = np.concatenate([rgb, np.zeros((2, 3, 1), np.uint8)], axis=2)
    assert np.array_equal(check_frame(rgba), rgb)
    for bad, words in ((rgb.astype(np.float32), "uint8"), (np.zeros((2, 3, 2), np.uint8), "shape"),
                       (np.zeros((0, 3, 3), np.uint8), "0 pixels"), (np.zeros((2, 9000, 3), np.uint8), "9000x2"),
                       ([[1, 2]], "image array")):
        with pytest.raises(FrameError, match=words) as e:
            check_frame(bad, "cam, frame 4")
        assert str(e.value).startswith("cam, frame 4: ") and "\n" not in str(e.value)


def test_decode_frame_reads_uploads_and_names_a_broken_one():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5, 4), 200).save(buf, format="PNG")
    assert decode_frame(buf.getvalue(), "a.png").shape == (4, 5, 3)
    with pytest.raises(BnnError, match=r"^b.jpg: cannot decode image \(not an image format PIL reads\)$"):
        decode_frame(b"not an image", "b.jpg")


def test_camera_source_converts_bgr_and_reports_absent_or_silent_cameras():
    frame = np.zeros((6, 8, 3), np.uint8)
    frame[:, :, 2] = 200  # red in OpenCV's order
    cv2 = FakeCv2([frame] * 3)
    cam = CameraSource(0, warmup=1, cv2=cv2)
    assert cam.read()[0, 0].tolist() == [200, 0, 0] and cam.name == "camera 0"
    cam.read()
    with pytest.raises(FrameError, match="^camera 0: returned no frame"):
        cam.read()
    cam.close()
    with pytest.raises(SourceUnavailable, match="^camera 1: not found, or in use by another program$"):
        CameraSource(1, cv2=cv2)
    with pytest.raises(SourceUnavailable, match="camera 0: not found"):
        CameraSource(0, cv2=FakeCv2([], opened=False))
    assert cv2.released == 2


def test_without_opencv_the_folder_is_used_and_the_note_says_why(tmp_path, monkeypatch, scenes):
    save_pngs(tmp_path / "frames" / "a", scenes["train"][0][:2])
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    src, note = open_source(0, str(tmp_path / "frames"))
    assert isinstance(src, FolderSource) and len(src.files) == 2
    assert note == "OpenCV (cv2) is not installed: frames from the images in %s instead" % (tmp_path / "frames")
    assert src.read().shape == (32, 32, 3)
    with pytest.raises(SourceUnavailable, match="^OpenCV .cv2. is not installed, and no folder"):
        open_source(0, None)
    with pytest.raises(SourceUnavailable, match="no folder for class 'b'"):
        src.for_class("b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceUnavailable, match="empty: no image files"):
        FolderSource(tmp_path / "empty")


# ------------------------------------------------------------------------------------------- teaching


class CountingBackend:
    """A backend that counts the images it extracts."""

    def __init__(self, backend):
        self.backend, self.images = backend, 0

    def extract(self, images, batch_size=None):
        self.images += len(images)
        return self.backend.extract(images, batch_size=batch_size)


def test_teach_capture_train_live_beats_chance_and_keeps_every_example(bundle, scenes, tmp_path):
    examples = tmp_path / "examples"
    with make_backend("emulator", bundle) as emu:
        backend = CountingBackend(emu)
        camera = FramesSource(scenes["train"][0], "camera")
        teacher = Teacher(bundle, backend, camera, examples_dir=str(examples))
        assert teacher.resumed == 0
        first, second, third = scenes["classes"]
        assert teacher.capture(first, PER_CLASS) == "%s: %d of %d frames added, %d examples in all" % (
            first, PER_CLASS, PER_CLASS, PER_CLASS)
        teacher.add_class(second)
        with pytest.raises(BnnError, match="^class '%s' has no examples yet" % second):
            teacher.train()
        # uploads: a bad frame is skipped with its reason, the good ones are kept
        bad = np.zeros((4, 4, 3), np.float64)
        line = teacher.add_frames(second, scenes["train"][1][:4] + [bad] + scenes["train"][1][4:])
        assert line.startswith("%s: %d of %d frames added" % (second, PER_CLASS, PER_CLASS + 1))
        assert "skipped 1 (%s, frame 5: expected 8-bit pixels" % second in line
        teacher.train()
        assert backend.images == 2 * PER_CLASS
        # a third class later: only its own frames are extracted
        teacher.source = FramesSource(scenes["train"][2], "camera")
        teacher.capture(third, PER_CLASS)
        assert backend.images == 3 * PER_CLASS
        head = teacher.train()
        assert head.classes == sorted([first, second, third]) and head.meta["examples"] == {c: PER_CLASS for c in
                                                                                       head.classes}
        assert head.meta["dataset"] == {"name": "folder", "data_dir": str(examples), "options": {}}

        teacher.source = FramesSource([f for f, _ in scenes["test"]], "camera")
        hits = 0
        for frame, label in scenes["test"]:
            res = teacher.step()
            assert np.array_equal(res.frame, frame) and res.top.shape == (3,) and set(res.seconds) == set(STAGES)
            hits += head.classes[res.top[0]] == scenes["classes"][label]
        assert hits / len(scenes["test"]) >= 0.6  # chance: 1/3
        timer = teacher.pipeline.timer
        assert timer.fps() > 0 and timer.host_fps() > 0 and set(timer.ms()) == set(STAGES)

        # every captured frame is on disk; a new session reads them back to the same features
        assert sorted(p.name for p in (examples / first).iterdir()) == ["%05d.png" % k for k in range(1, 9)]
        again = Teacher(bundle, emu, camera, examples_dir=str(examples))
    assert again.resumed == 3 * PER_CLASS and again.store.classes == teacher.store.classes
    for c in teacher.store.classes:
        assert np.array_equal(again.store.rows(c), teacher.store.rows(c))


def test_example_store_refuses_unsafe_names_and_too_few_classes():
    store = ExampleStore(12)
    for bad in ("", "  ", "../up", "a/b", ".hidden"):
        with pytest.raises(BnnError, match="class name"):
            store.add_class(bad)
    store.add("one", np.zeros((2, 2), np.uint8))
    with pytest.raises(BnnError, match="at least 2 classes"):
        store.arrays()
    with pytest.raises(BnnError, match="expected packed features"):
        store.add("two", np.zeros((2, 3), np.uint8))
    store.remove_class("one")
    assert store.classes == [] and len(store) == 0


def test_bench_live_times_every_stage(bundle):
    cfg = BenchConfig(quick=True, min_seconds=0.05)
    res = bench_live(bundle, "emulator", cfg, np.random.default_rng(0))
    assert set(res["ms"]) == set(STAGES) and res["frame"] == "640x480" and res["frames"] >= 3
    assert res["host_ms"] == pytest.approx(sum(v for k, v in res["ms"].items() if k != "capture"), abs=0.01)
    assert res["host_frames_per_s"] > 0 and res["cpu_ms_per_frame"] > 0


# ------------------------------------------------------------------------------------------- CLI


def cli(capsys, *argv):
    rc = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_teach_then_live_from_folders(bundle, scenes, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BOARD", raising=False)
    data = tmp_path / "frames"
    for name, frames in zip(scenes["classes"], scenes["train"]):
        save_pngs(data / name, frames)
    head = tmp_path / "heads" / "teach.npz"
    args = ["--bundle", bundle.root, "--folder", data, "--out", head, "--frames-per-class", 5]
    rc, out, err = cli(capsys, "teach", *args, *[a for c in scenes["classes"] for a in ("--class", c)])
    assert rc == 0, err
    res = json.loads(out)
    assert res["command"] == "teach" and res["classes"] == sorted(scenes["classes"]) and res["resumed"] == 0
    assert res["examples"] == {c: 5 for c in scenes["classes"]}
    assert res["examples_dir"] == str(tmp_path / "heads" / "teach-examples")
    assert load_head(str(head)).classes == sorted(scenes["classes"])
    assert err.count("teach: ") == 3 and "5 of 5 frames added" in err

    test = tmp_path / "test"
    save_pngs(test, [f for f, _ in scenes["test"]])
    (test / "broken.png").write_bytes(b"not a png")
    rc, out, err = cli(capsys, "live", "--bundle", bundle.root, "--head", head, "--folder", test, "--frames", 30)
    lines = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and "broken.png: cannot decode image" in err  # skipped and counted, the loop goes on
    assert [r["frame"] for r in lines[:-1]] == list(range(1, 31))  # 31 files, each read once
    assert all(len(r["top"]) == 3 and r["top"][0]["class"] in scenes["classes"] for r in lines[:-1])
    summary = lines[-1]
    assert summary["command"] == "live" and summary["frames"] == 30 and summary["skipped"] == 1
    assert set(summary["ms"]) == set(STAGES) and summary["fps"] > 0 and summary["host_fps"] > 0

    rc, out, err = cli(capsys, "live", "--bundle", bundle.root, "--head", head, "--folder", test, "--frames", 2,
                       "--table")
    assert rc in (0, 1) and "frames/s" in out.splitlines()[1]


def test_live_and_teach_bad_input_is_one_line(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BOARD", raising=False)
    monkeypatch.setitem(sys.modules, "cv2", None)
    head = tmp_path / "h.npz"
    for argv, words in (
            (["live", "--bundle", bundle.root, "--head", head], "error: %s: head file not found" % head),
            (["teach", "--bundle", bundle.root, "--out", head, "--class", "a", "--class", "b"],
             "error: OpenCV (cv2) is not installed, and no folder of images to use instead"),
            (["teach", "--bundle", bundle.root, "--out", head, "--class", "a/b", "--folder", tmp_path],
             "error: class name 'a/b'"),
            (["teach", "--bundle", bundle.root, "--out", head, "--class", "a", "--class", "b", "--folder", tmp_path],
             "error: %s: no image files in the folder" % tmp_path)):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith(words), err
    assert not head.exists()


def test_a_camera_that_stops_delivering(bundle, scenes, tmp_path, capsys, monkeypatch):
    """teach keeps what it captured and refuses to train on an empty class; live ends with one line."""
    monkeypatch.delenv("BOARD", raising=False)
    frames = [f[:, :, ::-1] for f in scenes["train"][0]]
    # opened, 5 warm-up frames, then 2 frames, then nothing: unplugged, or taken by another program
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2(frames[:7]))
    rc, out, err = cli(capsys, "teach", "--bundle", bundle.root, "--out", tmp_path / "h.npz", "--class", "a",
                       "--class", "b", "--frames-per-class", 3)
    assert rc == 2 and out == "" and not (tmp_path / "h.npz").exists()
    assert "teach: a: 2 of 3 frames added, 2 examples in all; skipped 1 (camera 0: returned no frame" in err
    assert err.strip().splitlines()[-1] == "error: class 'b' has no examples yet: capture some, or remove the class"
    assert len(list((tmp_path / "h-examples" / "a").glob("*.png"))) == 2  # what was captured is kept

    head = tmp_path / "head.npz"
    with make_backend("emulator", bundle) as emu:
        teacher = Teacher(bundle, emu, None)
        for name, class_frames in zip("ab", scenes["train"]):
            teacher.add_frames(name, class_frames)
        teacher.train()
        teacher.save_head(str(head))
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2(frames[:7]))
    rc, out, err = cli(capsys, "live", "--bundle", bundle.root, "--head", head, "--frames", 5)
    assert rc == 2 and [json.loads(line)["frame"] for line in out.splitlines()] == [1, 2]
    assert err.strip().splitlines()[-1] == ("error: camera 0: returned no frame (unplugged, or taken by another "
                                            "program?) (3 frames in a row)")


def test_ctrl_c_in_teach_says_what_was_kept(bundle, scenes, tmp_path, capsys, monkeypatch):
    import bnn_transfer.host.teach as teach
    monkeypatch.delenv("BOARD", raising=False)
    frames = [f[:, :, ::-1] for f in scenes["train"][0]]
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2(frames * 4))
    real = teach.Teacher.capture

    def capture(self, name, n):
        if name == "b":
            raise KeyboardInterrupt
        return real(self, name, n)

    monkeypatch.setattr(teach.Teacher, "capture", capture)
    rc, out, err = cli(capsys, "teach", "--bundle", bundle.root, "--out", tmp_path / "h.npz", "--class", "a",
                       "--class", "b", "--frames-per-class", 2)
    assert rc == 130 and out == "" and not (tmp_path / "h.npz").exists()
    assert ("teach: stopped; the examples captured so far are kept in %s (a: 2): run teach again to go on"
            % (tmp_path / "h-examples")) in err
    assert len(list((tmp_path / "h-examples" / "a").glob("*.png"))) == 2
