"""host/'s tests again on the oldest numpy and Pillow this Python installs (.ci/install's .venv/oldest-numpy).

A PYNQ 2.7 board has numpy 1.20 and an old Pillow; every other test runs on requirements.txt's numpy 2 and
Pillow 12, where a call that only newer versions have would pass unnoticed. The venv has numpy, Pillow and
pytest only, so the tests that need torch, qonnx, finn or scikit-learn skip there (they run here).
"""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OLD_PYTHON = os.path.join(ROOT, ".venv", "oldest-numpy", "bin", "python")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(OLD_PYTHON), reason="%s is not installed (.ci/install)" % OLD_PYTHON)
def test_host_tests_pass_on_the_oldest_numpy_and_pillow(tmp_path):
    probe = ("import importlib.util, numpy, PIL; print(numpy.__version__, PIL.__version__, "
             "importlib.util.find_spec('torch') is not None)")
    numpy_version, pil_version, has_torch = subprocess.run(
        [OLD_PYTHON, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert int(numpy_version.split(".")[0]) < 2 and has_torch == "False", (numpy_version, has_torch)

    this = os.path.relpath(os.path.abspath(__file__), ROOT)
    # its own pytest temp and no cache: the run beside this one must not clean up or share either
    r = subprocess.run([OLD_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                        str(tmp_path / "basetemp"), os.path.dirname(this), "--ignore", this],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, "host tests on numpy %s, Pillow %s:\n%s" % (numpy_version, pil_version,
                                                                         (r.stdout + r.stderr)[-4000:])
    assert " passed" in r.stdout.splitlines()[-1], r.stdout[-2000:]
