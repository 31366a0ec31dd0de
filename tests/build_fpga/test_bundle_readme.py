"""The deploy bundle's README (build_fpga/bundle_readme.py), written from the files of a bundle on disk."""

import json
import os

import pytest

from bnn_transfer.build_fpga.bundle_readme import PYNQ_IMAGES, readme


def _bundle(root, notebooks):
    """The files of a bundle as write_bundle has them when it writes the README."""
    for rel in ("emulator.npz", "host/__init__.py", "report/README.md", "pc/backbone.onnx"):
        os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(b"x" * (2_500_000 if rel.startswith("pc/") else 10))
    os.makedirs(os.path.join(root, "notebooks"))
    for name, title in notebooks.items():
        cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# %s\n" % title, "\n", "text\n"]}]
        with open(os.path.join(root, "notebooks", name), "w") as f:
            json.dump({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, f)
    with open(os.path.join(root, "notebooks", "README.md"), "w") as f:
        f.write("# the notebooks\n")


def _manifest(board):
    return {"board": board, "preset": "tiny", "part": "xc7z020clg400-1", "clock_mhz": 100.0, "feature_width": 256,
            "preprocess": {"input_size": 32, "resize_longest": 36}, "estimates": {"fps": 1234.4}}


def test_readme_copies_the_board_part_and_lists_the_bundled_notebooks(tmp_path):
    root = str(tmp_path / "pynq-z2")
    notebooks = {"teach.ipynb": "Teach the board live", "zz_new.ipynb": "A notebook added later"}
    _bundle(root, notebooks)
    text = readme(_manifest("pynq-z2"), False, None, root)
    lines = text.splitlines()
    dest = "/home/xilinx/jupyter_notebooks/bnn-tiny-pynq-z2"
    assert "Estimated throughput: **1,234 img/s** at 100 MHz (see `report/README.md`)." in lines  # the manifest's
    assert "ssh xilinx@<board-ip> mkdir -p %s" % dest in lines
    assert "scp -r README.md emulator.npz host manifest.json notebooks report xilinx@<board-ip>:%s/" % dest in lines
    assert "| `pc/` | `backbone.onnx` (2.5 MB): the QONNX graph" in text and "rsync -a --exclude pc/" in text
    # the notebooks are the bundled files, with their titles, not a typed list
    assert [line for line in lines if line.startswith("- `") and ".ipynb" in line] == [
        "- `teach.ipynb`: Teach the board live", "- `zz_new.ipynb`: A notebook added later"]
    # each PYNQ image family: its Python, how to get it (root's login shell), where Jupyter looks
    for image, ubuntu, python, _ in PYNQ_IMAGES:
        row = next(line for line in lines if line.startswith("| %s | %s | %s |" % (image, ubuntu, python)))
        assert "`sudo -i`" in row
    assert "/usr/local/share/pynq-venv" in text and "source /etc/profile.d/pynq_venv.sh" in text
    assert "`cannot import the pynq package`" in text and "--backend emulator" in text
    assert "this bundle was built without Vivado" in text and "## Building the bitstream" in text
    assert "Pynq-Z2" in text and "ubuntu" not in text  # the board's PYNQ name; no Kria notes for a Pynq-Z2


@pytest.mark.parametrize("board, note", [("kv260", "log in as `ubuntu`"), ("ultra96", "both the V1 and the V2")])
def test_readme_has_the_notes_of_its_board(tmp_path, board, note):
    root = str(tmp_path / board)
    _bundle(root, {})
    text = readme(_manifest(board), True, None, root)
    assert note in text and "(this bundle carries no notebooks)" in text
    assert "the copy left out `bitfile/`" in text and "## Building the bitstream" not in text
