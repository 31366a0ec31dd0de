"""finn-plus's builder is importable and runnable in-process without Vivado once prepare_finn ran."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HAVE_FINN = importlib.util.find_spec("finn") is not None
pytestmark = pytest.mark.skipif(not HAVE_FINN, reason="needs the finn-plus package")
NO_VIVADO = shutil.which("vivado") is None
REPO = Path(__file__).resolve().parents[2]


def _python(code, tmp_path, home="home", **extra_env):
    """Run ``code`` in a fresh interpreter without Vivado/FINN variables and with HOME in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XILINX", "FINN_", "PYTEST")) and k != "NUM_DEFAULT_WORKERS"}
    env.update(extra_env)
    env["HOME"] = str(tmp_path / home)
    env["PYTHONPATH"] = str(REPO)
    (tmp_path / home).mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)


def test_vivado_available_matches_path():
    from build_fpga.finn_env import vivado_available

    assert vivado_available() == (shutil.which("vivado") is not None and bool(os.environ.get("XILINX_VIVADO")))
    if NO_VIVADO:
        assert vivado_available() is False


@pytest.mark.slow
@pytest.mark.skipif(not NO_VIVADO, reason="checks the no-Vivado path")
def test_builder_import_fails_without_and_works_with_prepare_finn(tmp_path):
    # the two problems finn_env exists for: FINN's global settings, then the XSI names
    bare = _python("import finn.builder.build_dataflow", tmp_path, home="home_bare")
    assert bare.returncode != 0 and "Could not find global settings" in bare.stderr
    (tmp_path / "fb").mkdir()
    settings_only = _python("import finn.builder.build_dataflow", tmp_path, home="home_bare",
                            FINN_BUILD_DIR=str(tmp_path / "fb"))
    assert settings_only.returncode != 0 and "XILINX_VIVADO environment variable not set" in settings_only.stderr

    code = """
        import json, os, sys
        from build_fpga.finn_env import prepare_finn, vivado_available, VivadoRequired, NO_VIVADO_VERSION
        env = prepare_finn(sys.argv[1] if len(sys.argv) > 1 else "build")
        from finn.builder.build_dataflow import build_dataflow_cfg, exit_buildflow
        from finn.builder.build_dataflow_config import DataflowBuildConfig
        from finn.util.settings import get_settings
        import finn.xsi
        try:
            finn.xsi.SimEngine()
            raised = False
        except VivadoRequired:
            raised = True
        cfg = DataflowBuildConfig(output_dir="out", fpga_part="xc7z020clg400-1", target_fps=1)
        rc = exit_buildflow(cfg, {"a": 1.0}, 0)
        print(json.dumps({
            "vivado": vivado_available(), "env_vivado": env.vivado, "stubbed": env.stubbed, "raised": raised,
            "build_dir": str(get_settings().finn_build_dir), "env_build_dir": os.environ["FINN_BUILD_DIR"],
            "rc": rc, "meta": json.load(open("out/report/metadata_builder.json")),
            "home_finn": os.path.exists(os.path.expanduser("~/.finn")), "no_vivado": NO_VIVADO_VERSION,
        }))
    """
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["vivado"] is False and r["env_vivado"] is False and r["raised"] is True
    assert "SimEngine" in r["stubbed"] and "rtlsim_multi_io" in r["stubbed"]
    assert r["build_dir"] == r["env_build_dir"] == str((tmp_path / "build" / "finn_tmp").resolve())
    assert (tmp_path / "build" / "finn_tmp").is_dir()
    assert r["rc"] == 0 and r["meta"] == {"status": "ok", "tool_version": r["no_vivado"]}
    assert r["home_finn"] is False  # FINNSettings.init would otherwise create ~/.finn


def test_finn_session_restores_environment(tmp_path, monkeypatch):
    import finn.util.settings as fs

    from build_fpga.finn_env import finn_session

    monkeypatch.delenv("FINN_BUILD_DIR", raising=False)
    monkeypatch.setenv("NUM_DEFAULT_WORKERS", "7")
    before = fs._SETTINGS
    with finn_session(tmp_path / "b", num_workers=1) as env:
        assert os.environ["FINN_BUILD_DIR"] == str(env.build_dir)
        assert os.environ["NUM_DEFAULT_WORKERS"] == "1"
        assert fs.get_settings().finn_build_dir == env.build_dir
    assert "FINN_BUILD_DIR" not in os.environ
    assert os.environ["NUM_DEFAULT_WORKERS"] == "7"
    assert fs._SETTINGS is before


def test_contained_build_logging_restores_streams():
    import logging

    from build_fpga.finn_env import contained_build_logging

    out, err, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    with contained_build_logging():
        with open(os.devnull, "w") as devnull:
            sys.stdout = sys.stderr = devnull  # what FINN's setup_logging does, roughly
            logging.basicConfig(force=True, filename=os.devnull)
    assert sys.stdout is out and sys.stderr is err
    assert logging.getLogger().handlers == handlers
