"""pyproject.toml: the console scripts, the extras each stage names when a package is missing, the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib

from bnn_transfer.host.cli import PIP_NAMES, STAGE_EXTRAS, missing_package
from bnn_transfer.host.errors import BnnError

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
    ("torch", "bnn_transfer.train.__main__:cli", "/usr/bin/bnn-train", ["fit", "--out", "{tmp}/run", "--epochs", "1"],
     "error: bnn-train needs torch: pip install 'bnn-transfer[train]'"),
    # the stage's extra, not the smallest one that has torch: it brings all the stage needs
    ("torch", "bnn_transfer.export.__main__:cli", "-c", ["head", "--run", "{tmp}/run", "--out", "{tmp}/head.npz"],
     "error: python -m export needs torch: pip install 'bnn-transfer[export]'"),
    ("torch", "bnn_transfer.bench.__main__:cli", "-c", ["--quick", "--out", "{tmp}/run"],
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
    assert missing_package(ModuleNotFoundError("No module named 'bnn_transfer.train.nope'",
                                               name="bnn_transfer.train.nope"), "train") is None
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
    assert sorted(v.split(".")[1] for v in scripts.values()) == sorted(STAGES)
    assert {v.split(".")[0] for v in scripts.values()} == {"bnn_transfer"}
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
                found.add("bnn_transfer." + os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == found | {"bnn_transfer.build_fpga.notebooks"}
    assert setuptools["package-dir"] == dict({"bnn_transfer." + s: s for s in STAGES},
                                             **{"bnn_transfer.build_fpga.notebooks": "notebooks"})


def _wheel(src_root, names, out):
    """The wheel of the project (or distribution) at ``src_root``, built from a clean copy of ``names``:
    setuptools builds in the source tree (build/, *.egg-info)."""
    src = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in names:
        path = os.path.join(src_root, name)
        (shutil.copytree(path, src / name, ignore=ignore) if os.path.isdir(path)
         else shutil.copyfile(path, src / name))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = (out / "wheel").iterdir()
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _wheel(ROOT, STAGES + ("notebooks", "pyproject.toml", "README.md"), tmp_path_factory.mktemp("bnn"))


def test_an_installed_copy_bundles_the_notebooks(tmp_path, wheel):
    """The wheel holds notebooks/ (as build_fpga/notebooks) and host/README.md, and build_fpga run from
    the installed files, not the checkout, copies both into a bundle."""
    notebooks = sorted(os.listdir(os.path.join(ROOT, "notebooks")))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {"bnn_transfer/build_fpga/notebooks/" + n for n in notebooks} | {"bnn_transfer/host/README.md"} <= names
    assert {n.split("/")[0] for n in names} == {"bnn_transfer", "bnn_transfer-0.1.0.dist-info"}
    assert "bnn_transfer/__init__.py" not in names  # the checkout's mapping onto the repo root stays out

    probe = ("import bnn_transfer.build_fpga.bundle as b, sys; assert b.__file__.startswith(sys.argv[1]), b.__file__; "
             "print(b.copy_runtime(sys.argv[2]))")
    out = tmp_path / "bundle"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site"), str(out)], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out / "notebooks")) == notebooks
    assert (out / "host" / "README.md").read_bytes() == open(os.path.join(ROOT, "host", "README.md"), "rb").read()


_OTHER_TRAIN = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "train"
version = "9.9"

[tool.setuptools]
packages = ["train"]
"""


@pytest.mark.slow
def test_the_wheel_installs_beside_another_distribution_named_train(tmp_path, wheel):
    """PyPI has distributions named train, export, bench and demo: in a fresh venv holding one of them, ours
    installs, both import, and the console scripts run ours. The venv sees numpy and Pillow (host/'s two
    dependencies) through a folder of links to this interpreter's copies, nothing else of it."""
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "train" / "__init__.py").write_text("WHO = 'the other train'\n")
    (other / "pyproject.toml").write_text(_OTHER_TRAIN)
    other_wheel = _wheel(other, ("train", "pyproject.toml"), tmp_path / "other-build")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
           "--disable-pip-version-check"]
    subprocess.run(pip + [str(other_wheel)], check=True, timeout=300)
    r = subprocess.run(pip + [str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    deps = tmp_path / "deps"
    deps.mkdir()
    import numpy
    import PIL

    site = os.path.dirname(os.path.dirname(numpy.__file__))
    assert os.path.dirname(os.path.dirname(PIL.__file__)) == site
    for name in os.listdir(site):  # the packages and their bundled libraries (numpy.libs, pillow.libs)
        if name.split(".")[0].lower() in ("numpy", "pil", "pillow") and not name.endswith("-info"):
            os.symlink(os.path.join(site, name), deps / name)
    env = dict(os.environ, PYTHONPATH=str(deps))
    probe = ("import train, bnn_transfer.train, bnn_transfer.host.heads as h; print(train.WHO); "
             "print(bnn_transfer.train.__file__); print(h.__file__)")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    who, ours, heads = r.stdout.splitlines()
    site = str(venv / "lib")
    assert who == "the other train" and ours.startswith(site) and heads.startswith(site), r.stdout
    r = subprocess.run([str(venv / "bin" / "bnn-host"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "fit" in r.stdout, r.stderr[-3000:]
    r = subprocess.run([str(venv / "bin" / "bnn-train"), "fit", "--out", str(tmp_path / "run")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr.splitlines()) == (2, ["error: bnn-train needs torch: pip install "
                                                         "'bnn-transfer[train]'"]), r.stderr[-3000:]


def test_a_copy_without_notebooks_is_refused(tmp_path, monkeypatch):
    from bnn_transfer.build_fpga import bundle

    monkeypatch.setattr(bundle, "NOTEBOOK_DIRS", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(BnnError, match="notebooks/: in neither .*a nor .*b; this copy of bnn-transfer is incomplete"):
        bundle.copy_runtime(str(tmp_path / "bundle"))
