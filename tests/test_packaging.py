"""pyproject.toml: the console scripts, the extras each stage names when a package is missing, the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib

from host.cli import PIP_NAMES, STAGE_EXTRAS, missing_package
from host.errors import BnnError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("host", "train", "export", "build_fpga", "bench", "demo")

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)

# Imports the stage's __main__ with the named packages missing (as on an install without their extra), then
# runs its console-script function with sys.argv[1:] after the module name.
_WITHOUT = r"""
import importlib, sys

blocked = set(sys.argv[1].split(","))

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in blocked:
            raise ModuleNotFoundError("No module named %r" % top, name=top)
        return None

sys.meta_path.insert(0, NotInstalled())
module, func = sys.argv[2].split(":")
sys.argv = sys.argv[3:]
sys.exit(getattr(importlib.import_module(module), func)())
"""


def _run_without(blocked, script, argv0, *args):
    return subprocess.run([sys.executable, "-c", _WITHOUT, blocked, script, argv0, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("blocked,script,argv0,args,line", [
    ("torch", "train.__main__:cli", "/usr/bin/bnn-train", ["fit", "--out", "{tmp}/run", "--epochs", "1"],
     "error: bnn-train needs torch: pip install 'bnn-transfer[train]'"),
    # the stage's extra, not the smallest one that has torch: it brings all the stage needs
    ("torch", "export.__main__:cli", "-c", ["head", "--run", "{tmp}/run", "--out", "{tmp}/head.npz"],
     "error: python -m export needs torch: pip install 'bnn-transfer[export]'"),
    ("torch", "bench.__main__:cli", "-c", ["--quick", "--out", "{tmp}/run"],
     "error: python -m bench needs torch: pip install 'bnn-transfer[bench]'"),
])
def test_a_stage_without_its_extra_names_the_extra_to_install(tmp_path, blocked, script, argv0, args, line):
    r = _run_without(blocked, script, argv0, *[a.format(tmp=tmp_path) for a in args])
    assert (r.returncode, r.stderr.splitlines()) == (2, [line]), r.stderr[-3000:]
    assert r.stdout == "" and os.listdir(tmp_path) == []


def test_a_missing_package_outside_the_stages_extra_is_named_as_pip_knows_it(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/board/venv/bin/bnn-host", "fit"])
    e = missing_package(ModuleNotFoundError("No module named 'scipy'", name="scipy"), "host")
    assert isinstance(e, BnnError) and str(e) == "bnn-host needs scipy: pip install scipy"
    monkeypatch.setattr(sys, "argv", ["/x/build_fpga/__main__.py"])  # python -m build_fpga
    e = missing_package(ModuleNotFoundError("No module named 'finn'", name="finn"), "build_fpga")
    assert str(e) == "python -m build_fpga needs finn: pip install --no-deps finn-plus==1.6.1"
    # a module of the repo's own, or one no stage declares, is a bug: the internal error stays
    assert missing_package(ModuleNotFoundError("No module named 'train.nope'", name="train.nope"), "train") is None
    assert missing_package(ModuleNotFoundError("No module named 'cv2'", name="cv2"), "host") is None
    assert missing_package(ImportError("cannot import name 'x'", name="torch"), "train") is None


def _extra_packages(extra, extras):
    """The distribution names ``extra`` installs, its ``bnn-transfer[...]`` references followed."""
    out = set()
    for req in extras[extra]:
        if req.startswith("bnn-transfer["):
            out |= _extra_packages(req[len("bnn-transfer["):-1], extras)
        else:
            out.add(req)
    return out


def test_each_stages_extra_installs_the_packages_the_error_boundary_names():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(STAGE_EXTRAS) <= set(extras)
    for stage, modules in STAGE_EXTRAS.items():
        assert _extra_packages(stage, extras) == {PIP_NAMES[m] for m in modules}, stage


def test_every_console_script_ends_in_the_error_boundary(monkeypatch, capsys):
    import importlib

    scripts = PYPROJECT["project"]["scripts"]
    assert sorted(v.split(".")[0] for v in scripts.values()) == sorted(STAGES)
    for name, target in scripts.items():
        module, func = target.split(":")
        monkeypatch.setattr(sys, "argv", [name, "--no-such-option"])
        assert getattr(importlib.import_module(module), func)() == 2, name
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (name, err)  # usage errors are one line too


def test_the_package_list_holds_every_package_of_the_stages():
    found = set()
    for stage in STAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, stage)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == found | {"build_fpga.notebooks"}
    assert setuptools["package-dir"] == {"build_fpga.notebooks": "notebooks"}


def test_an_installed_copy_bundles_the_notebooks(tmp_path):
    """The wheel holds notebooks/ (as build_fpga/notebooks) and host/README.md, and build_fpga run from
    the installed files, not the checkout, copies both into a bundle."""
    src = tmp_path / "src"  # a clean copy: setuptools builds in the source tree (build/, *.egg-info)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in STAGES + ("notebooks",):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(os.path.join(ROOT, name), src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").iterdir()
    notebooks = sorted(os.listdir(os.path.join(ROOT, "notebooks")))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {"build_fpga/notebooks/" + n for n in notebooks} | {"host/README.md"} <= names

    probe = ("import build_fpga.bundle as b, sys; assert b.__file__.startswith(sys.argv[1]), b.__file__; "
             "print(b.copy_runtime(sys.argv[2]))")
    out = tmp_path / "bundle"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site"), str(out)], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out / "notebooks")) == notebooks
    assert (out / "host" / "README.md").read_bytes() == open(os.path.join(ROOT, "host", "README.md"), "rb").read()


def test_a_copy_without_notebooks_is_refused(tmp_path, monkeypatch):
    from build_fpga import bundle

    monkeypatch.setattr(bundle, "NOTEBOOK_DIRS", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(BnnError, match="notebooks/: in neither .*a nor .*b; this copy of bnn-transfer is incomplete"):
        bundle.copy_runtime(str(tmp_path / "bundle"))
