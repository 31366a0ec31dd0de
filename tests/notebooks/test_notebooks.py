"""The board notebooks, run end to end with nbclient on a tiny bundle (their committed form: test_notebook_files.py).

Every run copies ``host/`` and ``notebooks/`` into a deploy bundle made by ``fake_pynq.make_bundle``
(8x8 input, 12 features), as ``build_fpga`` ships them, and starts the kernel in the bundle's
``notebooks/`` folder without ``BNN_BUNDLE``: the notebooks must find the bundle and ``host`` on
their own. The bundle has a bitstream but no ``pynq`` is importable, so the notebooks pick the
emulator, as on a PC; the throughput run adds a fake ``pynq`` package (the fake board of
``tests/host/fake_pynq.py``) and the camera runs a fake ``cv2``, so those paths run too.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
HOST_TESTS = REPO / "tests" / "host"
SMALL_DATASET = {"n_train_per_class": 12, "n_test_per_class": 4, "image_size": 8}

sys.path.insert(0, str(HOST_TESTS))
from fake_pynq import FEATURE_WIDTH, colour_network, make_bundle  # noqa: E402

from bnn_transfer.host.bundle import check_head_compatible, load_bundle  # noqa: E402
from bnn_transfer.host.heads import load_head  # noqa: E402

FAKE_PYNQ = '''
import os
import sys

sys.path.insert(0, {tests!r})
from fake_pynq import FakeBoard  # noqa: E402

from bnn_transfer.host.bundle import load_bundle  # noqa: E402

_module = FakeBoard(load_bundle(os.environ["BNN_FAKE_PYNQ_BUNDLE"])).module()
Overlay = _module.Overlay
allocate = _module.allocate
'''

FAKE_CV2 = '''
import numpy as np

COLOR_BGR2RGB = 4


class VideoCapture:
    def __init__(self, index):
        self.index = index

    def isOpened(self):
        return self.index == 0

    def read(self):
        frame = np.zeros((30, 40, 3), np.uint8)
        frame[:, :, 2] = 220  # red in OpenCV's BGR order
        return True, frame

    def release(self):
        pass


def cvtColor(img, code):
    assert code == COLOR_BGR2RGB
    return img[:, :, ::-1].copy()
'''


def _module_dir(root, name, source):
    """A folder for PYTHONPATH holding the package ``name`` with ``source`` as its __init__."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(source)
    return root


def board_bundle(root, **bundle_args):
    """A deploy bundle at ``root`` as copied to a board: with host/ and notebooks/ inside."""
    make_bundle(root, **bundle_args)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(REPO / "host", root / "host", ignore=skip)
    shutil.copytree(NOTEBOOKS, root / "notebooks", ignore=skip)
    return root


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A bundle on the "board", and a kernel environment that writes nowhere but the test's folder."""
    base = tmp_path_factory.mktemp("notebooks")
    root = board_bundle(base / "bnn-transfer")
    scratch = base / "scratch"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), "MPLCONFIGDIR": str(base / "mpl"), "IPYTHONDIR": str(base / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "BNN_DATASET_OPTIONS": json.dumps(SMALL_DATASET)}

    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        import ipykernel.kernelspec

        prefix = base / "kernelspec"
        ipykernel.kernelspec.install(prefix=str(prefix))
        env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    return {"root": root, "base": base, "scratch": scratch, "env": env}


def execute(board, name, root=None, edit=None, **env):
    """Run notebook ``name`` of the bundle ``root`` (default: the board's) in its own folder; return it executed.

    ``edit(nb)`` may change the notebook before it runs (insert the cells that drive its widgets).
    """
    folder = (root or board["root"]) / "notebooks"
    nb = nbformat.read(str(folder / (name + ".ipynb")), as_version=4)
    if edit is not None:
        edit(nb)
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("BNN_")] + ["BOARD", "MPLBACKEND", "PYTHONPATH"]:
            mp.delenv(key, raising=False)
        for key, value in dict(board["env"], **env).items():
            mp.setenv(key, value)
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                         resources={"metadata": {"path": str(folder)}})
        client.execute()
    return nb


def outputs(nb, kind):
    """Text (kind "text") or the number of PNG images (kind "png") in a notebook's outputs."""
    texts, pngs = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out["text"])
            data = out.get("data", {})
            texts.append(data.get("text/plain", ""))
            pngs += "image/png" in data
    return "".join(texts) if kind == "text" else pngs


@pytest.fixture(scope="module")
def trained(board):
    """transfer_learning run once with its defaults: the head the other notebooks use."""
    return execute(board, "transfer_learning")


def test_transfer_learning_trains_evaluates_and_saves_a_head(board, trained):
    root = board["root"]
    head_path = root / "heads" / "synthetic-transfer-float.npz"
    assert head_path.is_file()
    head = load_head(str(head_path))
    assert head.variant == "float" and head.num_classes == 10 and head.feature_width == FEATURE_WIDTH
    assert head.meta["dataset"]["name"] == "synthetic-transfer"
    assert head.meta["dataset"]["options"] == SMALL_DATASET
    check_head_compatible(load_bundle(str(root)), head.meta, str(head_path))  # recorded this bundle's backbone
    assert (root / "heads" / "synthetic-transfer-float-confusion.png").stat().st_size > 1000

    text = outputs(trained, "text")
    assert "using          emulator" in text  # bitstream present, but no PYNQ here
    assert "120 images -> 12 features each, 2 bytes packed" in text
    assert "on 40 test images (chance: 10.0%)" in text and "images/s end to end" in text
    # one image per class, training curves, confusion matrix, sample predictions
    assert outputs(trained, "png") == 4


def write_photos(folder, specs):
    """JPEG/PNG files of plain colours (size, colour) named photo<k>; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (size, colour) in enumerate(specs):
        paths.append(str(folder / ("photo%d.%s" % (k, "png" if k % 2 else "jpg"))))
        Image.new("RGB", size, colour).save(paths[-1])
    return paths


def test_live_classify_files_and_camera(board, trained, tmp_path):
    files = write_photos(tmp_path / "photos", [((20, 30), (200, 30, 30)), ((64, 48), (20, 40, 220))])
    mods = _module_dir(tmp_path / "mods", "cv2", FAKE_CV2)
    nb = execute(board, "live_classify", PYTHONPATH=str(mods), BNN_IMAGES=os.pathsep.join(files))
    text = outputs(nb, "text")
    # no BNN_HEAD: the newest head of the bundle's heads/, which transfer_learning saved
    assert "synthetic-transfer-float.npz (float, 10 classes" in text
    assert "2 images in" in text and "emulator backend" in text
    assert "camera frame 40x30 classified" in text
    assert outputs(nb, "png") == 2  # the files with their top-5 bars, then the camera frame


def test_folder_task_binary_head_then_live_samples(board, tmp_path):
    """A folder of images on the board: train/test class folders, one unreadable file; then live_classify
    on the head's own test images, on a board without OpenCV."""
    data = tmp_path / "fruit"
    colours = {"apple": (200, 30, 30), "banana": (230, 220, 40), "cherry": (120, 0, 60)}
    for name, colour in colours.items():
        write_photos(data / "train" / name, [((24 + k, 30), colour) for k in range(6)])
        write_photos(data / "test" / name, [((30, 24 + k), colour) for k in range(2)])
    (data / "train" / "apple" / "broken.jpg").write_bytes(b"not a jpeg at all")
    root = board_bundle(tmp_path / "board" / "bnn-transfer")

    nb = execute(board, "transfer_learning", root=root, BNN_DATA_DIR=str(data), BNN_HEAD_VARIANT="binary",
                 BNN_DATASET_OPTIONS="")
    text = outputs(nb, "text")
    assert "folder: 19 training and 6 test images, 3 classes" in text
    assert "skipped 1 unreadable images of 19" in text and "broken.jpg" in text
    assert "on 6 test images (chance: 33.3%)" in text
    head = load_head(str(root / "heads" / "folder-binary.npz"))
    assert head.variant == "binary" and head.classes == ["apple", "banana", "cherry"]
    assert head.meta["dataset"] == {"name": "folder", "data_dir": str(data), "options": {}}

    mods = _module_dir(tmp_path / "mods", "cv2", "raise ImportError('no OpenCV on this board')\n")
    nb = execute(board, "live_classify", root=root, PYTHONPATH=str(mods), BNN_NUM_SAMPLES="2")
    text = outputs(nb, "text")
    assert "folder-binary.npz (binary, 3 classes" in text
    # the head's own test images, read from their files: one of the first and one of the last class
    assert str(data / "test" / "apple" / "photo0.jpg") in text and str(data / "test" / "cherry") in text
    assert "2 images in" in text
    assert "OpenCV (cv2) is not installed: skipping the camera" in text
    assert outputs(nb, "png") == 1


def test_throughput_accelerator_vs_emulator(board, tmp_path):
    mods = _module_dir(tmp_path / "mods", "pynq", FAKE_PYNQ.format(tests=str(HOST_TESTS)))
    nb = execute(board, "throughput", PYTHONPATH=str(mods), BNN_FAKE_PYNQ_BUNDLE=str(board["root"]),
                 BNN_BATCH_SIZES="1,4", BNN_MIN_SECONDS="0.02")
    text = outputs(nb, "text")
    assert "measuring: pynq, emulator" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["pynq"], ["emulator"])]
    assert [(r[0], r[1]) for r in rows] == [("pynq", "1"), ("pynq", "4"), ("emulator", "1"), ("emulator", "4")]
    assert all(float(r[2]) > 0 for r in rows) and all(r[4].endswith("x") for r in rows)
    assert outputs(nb, "png") == 1


# ------------------------------------------------------------------------------- teach

TEACH_CLASSES, TEACH_FRAMES = 3, 8

# A USB camera at index 0 pointed at synthetic-transfer objects: show(k) at class k's training
# images, show(None) at the test images of every class, whose labels it records in `shown`.
# $BNN_FAKE_CAMERA_CLASSES classes, $BNN_FRAMES_PER_CLASS training images each.
FAKE_CAMERA = '''
import os

import numpy as np

from bnn_transfer.host.synthetic import open_synthetic

_FRAMES = int(os.environ["BNN_FRAMES_PER_CLASS"])
_OPTIONS = {"num_classes": int(os.environ["BNN_FAKE_CAMERA_CLASSES"]), "image_size": 32}
_TRAIN = open_synthetic("synthetic-transfer", "train", n_train_per_class=_FRAMES, **_OPTIONS)
_TEST = open_synthetic("synthetic-transfer", "test", n_test_per_class=10, **_OPTIONS)
CLASSES = list(_TRAIN.classes)
shown = []
_scene = [0, 0]


def show(k):
    _scene[:] = [k, 0]


class VideoCapture:
    def __init__(self, index):
        self.index = index

    def isOpened(self):
        return self.index == 0

    def read(self):
        k, pos = _scene
        _scene[1] += 1
        if k is None:
            i = pos % len(_TEST)
            shown.append(int(_TEST.labels[i]))
            img = _TEST.load(i)
        else:
            img = _TRAIN.load(int(np.flatnonzero(_TRAIN.labels == k)[pos % _FRAMES]))
        return True, np.ascontiguousarray(img[:, :, ::-1])  # OpenCV's BGR

    def release(self):
        pass
'''

# What a user does with the widgets, as code: name each class, capture its frames, try to train
# with a class that has no examples, remove it, upload two images and a broken file, train.
DRIVE_CAMERA = '''
import datetime
import re

import cv2
import numpy as np


def said():
    print(html.unescape(re.sub("<[^>]+>", "", message.value)))


for k, name in enumerate(cv2.CLASSES):
    cv2.show(k)
    new_class.value = name
    add_class_button.click()
    capture_button.click()
    said()
new_class.value = "nothing yet"
add_class_button.click()
train_button.click()
said()
remove_class_button.click()
said()


WHEN = datetime.datetime(2026, 1, 1)


def png(k):
    buf = io.BytesIO()
    Image.fromarray(cv2.VideoCapture(0).read()[1][:, :, ::-1]).save(buf, format="PNG")
    return {"name": "photo%d.png" % k, "type": "image/png", "size": 0, "content": memoryview(buf.getvalue()),
            "last_modified": WHEN}


cv2.show(0)
upload.value = (png(0), png(1), {"name": "broken.jpg", "type": "image/jpeg", "size": 9,
                                 "content": memoryview(b"not a jpeg"), "last_modified": WHEN})
class_list.value = cv2.CLASSES[0]
add_uploads_button.click()
said()
train_button.click()
said()
cv2.show(None)
'''

CHECK_LIVE = '''
import cv2

hits = sum(teacher.head.classes[r.top[0]] == cv2.CLASSES[label] for r, label in zip(results, cv2.shown[-len(results):]))
print("live top-1: %d of %d" % (hits, len(results)))
'''


def driven(drive, check=None):
    """An ``execute`` edit: ``drive`` right after the widgets are made, ``check`` after the live run."""
    def edit(nb):
        k = next(i for i, c in enumerate(nb.cells) if "train_button = widgets.Button" in c.source)
        nb.cells.insert(k + 1, nbformat.v4.new_code_cell(drive))
        if check is not None:
            k = next(i for i, c in enumerate(nb.cells) if "results = run_live(" in c.source)
            nb.cells.insert(k + 1, nbformat.v4.new_code_cell(check))
    return edit


def colour_board(root):
    """A board bundle whose features carry colour: a head taught from a few frames beats chance on it."""
    network, io, width = colour_network()
    return board_bundle(root, network=network, io=io, feature_width=width)


def test_teach_with_a_camera_capture_train_live(board, tmp_path):
    pytest.importorskip("ipywidgets")
    from bnn_transfer.host.synthetic import open_synthetic

    root = colour_board(tmp_path / "board" / "bnn-transfer")
    mods = _module_dir(tmp_path / "mods", "cv2", FAKE_CAMERA)
    nb = execute(board, "teach", root=root, edit=driven(DRIVE_CAMERA, CHECK_LIVE), PYTHONPATH=str(mods),
                 BNN_FRAMES_PER_CLASS=str(TEACH_FRAMES), BNN_FAKE_CAMERA_CLASSES=str(TEACH_CLASSES))
    text = outputs(nb, "text")
    assert "frames    frames from camera 0" in text and "examples  %s: none yet" % (root / "teach") in text
    shown = open_synthetic("synthetic-transfer", "train", num_classes=TEACH_CLASSES).classes  # in capture order
    for name in shown:
        assert "%s: %d of %d frames added, %d examples in all" % ((name,) + (TEACH_FRAMES,) * 3) in text
    assert "error: class 'nothing yet' has no examples yet: capture some, or remove the class" in text
    assert "class nothing yet removed from this session" in text
    # the broken upload is one line; the two good ones are added to what was captured
    assert ("%s: 2 of 2 frames added, %d examples in all; 1 unreadable (broken.jpg: cannot decode image "
            "(not an image format PIL reads))" % (shown[0], TEACH_FRAMES + 2)) in text
    assert "trained a float head on %d examples of 3 classes" % (TEACH_CLASSES * TEACH_FRAMES + 2) in text

    head = load_head(str(root / "heads" / "teach-float.npz"))
    assert head.classes == sorted(shown)  # the order of the folder of saved frames
    check_head_compatible(load_bundle(str(root)), head.meta, "teach-float.npz")
    counts = {c: TEACH_FRAMES + 2 * (c == shown[0]) for c in shown}
    assert head.meta["examples"] == counts
    for name in shown:  # every captured and uploaded frame kept
        assert len(list((root / "teach" / name).glob("*.png"))) == counts[name]

    assert "30 frames in" in text and "per stage (ms): capture" in text
    hits = int(text.split("live top-1: ")[1].split(" of 30")[0])
    assert hits >= 18, text  # 60%; chance is 1/3

    # live_classify finds the taught head (the newest in heads/) and classifies some of its examples
    nb = execute(board, "live_classify", root=root, BNN_CAMERA="-1", BNN_NUM_SAMPLES="2")
    text = outputs(nb, "text")
    assert "teach-float.npz (float, 3 classes" in text and str(root / "teach" / head.classes[0]) in text
    assert "2 images in" in text


DRIVE_FOLDER = '''
for name in sorted(os.listdir(FRAMES_DIR)):
    new_class.value = name
    add_class_button.click()
    capture_button.click()
train_button.click()
print(message.value)
'''


def test_teach_without_opencv_uses_the_folder(board, tmp_path):
    pytest.importorskip("ipywidgets")
    from bnn_transfer.host.synthetic import open_synthetic

    frames = tmp_path / "frames"
    train = open_synthetic("synthetic-transfer", "train", num_classes=2, n_train_per_class=4, image_size=24)
    for i in range(len(train)):
        folder = frames / train.classes[train.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(train.load(i)).save(str(folder / ("%d.png" % i)))
    root = colour_board(tmp_path / "board" / "bnn-transfer")
    mods = _module_dir(tmp_path / "mods", "cv2", "raise ImportError('no OpenCV on this board')\n")
    nb = execute(board, "teach", root=root, edit=driven(DRIVE_FOLDER), PYTHONPATH=str(mods),
                 BNN_FRAMES_DIR=str(frames), BNN_FRAMES_PER_CLASS="4")
    text = outputs(nb, "text")
    assert "frames    OpenCV (cv2) is not installed: frames from the images in %s instead" % frames in text
    assert "trained a float head on 8 examples of 2 classes" in text
    assert load_head(str(root / "heads" / "teach-float.npz")).classes == sorted(train.classes)
    assert "30 frames in" in text
