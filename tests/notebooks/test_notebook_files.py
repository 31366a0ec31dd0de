"""The committed notebooks: clean (no outputs or metadata), and code a PYNQ board can run (Python 3.8
syntax, host/ and the board's packages only, no absolute paths). test_notebooks.py executes them."""

import ast
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("transfer_learning", "live_classify", "throughput", "teach")
# What a notebook may import: the board has no torch, and the notebooks run on host/ only.
ALLOWED_IMPORTS = {"glob", "html", "io", "json", "os", "sys", "tempfile", "threading", "time", "numpy", "matplotlib",
                   "PIL", "IPython", "ipywidgets", "host", "cv2"}


def test_every_notebook_is_checked():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source):
    """A cell's source as plain Python: IPython turns its magics into function calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean(name):
    path = NOTEBOOKS / (name + ".ipynb")
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    for cell in nb.cells:
        assert not cell.metadata, "%s: cell %s carries metadata" % (path, cell.id)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, "%s: cell %s has outputs" % (path, cell.id)
    # the parameters cell comes first and lets tests and users point the notebook elsewhere
    first = _code_cells(nb)[0].source
    assert 'os.environ.get("BNN_BUNDLE", ROOT)' in first and "sys.path.insert(0, ROOT)" in first


@pytest.mark.parametrize("name", NAMES)
def test_notebook_code_runs_on_the_board(name):
    """Python 3.8 syntax, host/ and the board's packages only, no absolute paths."""
    nb = nbformat.read(str(NOTEBOOKS / (name + ".ipynb")), as_version=4)
    for cell in _code_cells(nb):
        tree = ast.parse(_python(cell.source), feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    assert not node.value.startswith(("/home", "/work", "/tmp", "/root")), node.value
                continue
            for m in modules:
                assert m.split(".")[0] in ALLOWED_IMPORTS, "%s: cell %s imports %s" % (name, cell.id, m)
