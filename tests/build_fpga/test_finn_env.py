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


def _env(tmp_path, extra_env, home="home"):
    """os.environ without Vivado/FINN variables, plus ``extra_env``, with HOME in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XILINX", "FINN_", "PYTEST")) and k not in ("NUM_DEFAULT_WORKERS", "LD_LIBRARY_PATH")}
    env.update(extra_env)
    env["HOME"] = str(tmp_path / home)
    env["PYTHONPATH"] = str(REPO)
    (tmp_path / home).mkdir(exist_ok=True)
    return env


def _python(code, tmp_path, home="home", **extra_env):
    """Run ``code`` in a fresh interpreter without Vivado/FINN variables and with HOME in tmp_path."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path),
                          env=_env(tmp_path, extra_env, home), capture_output=True, text=True, timeout=120)


def test_vivado_available_matches_path():
    from bnn_transfer.build_fpga.finn_env import vivado_available

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
        from bnn_transfer.build_fpga.finn_env import prepare_finn, vivado_available, VivadoRequired, NO_VIVADO_VERSION
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

    from bnn_transfer.build_fpga.finn_env import finn_session

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

    from bnn_transfer.build_fpga.finn_env import contained_build_logging

    out, err, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    with contained_build_logging():
        with open(os.devnull, "w") as devnull:
            sys.stdout = sys.stderr = devnull  # what FINN's setup_logging does, roughly
            logging.basicConfig(force=True, filename=os.devnull)
    assert sys.stdout is out and sys.stderr is err
    assert logging.getLogger().handlers == handlers


# Runs finn-plus's own `finn build` command (click) with the two things that need the network or
# a real Vivado neutralised (the dependency updater, the XSI build) and the builder replaced by a
# probe that records the environment the launcher hands to FINN.
_LAUNCHER = """
    import json, os, sys, types
    from unittest import mock
    import finn.xsi
    from finn.interface import run_finn as rf

    before = dict(os.environ)
    seen = {}
    probe = types.ModuleType("finn.builder.build_dataflow")
    probe.build_dataflow_cfg = lambda model, cfg: seen.update(os.environ)
    sys.modules["finn.builder.build_dataflow"] = probe

    class NoUpdates:
        def __init__(self, **kw):
            pass
        def update(self):
            pass

    with mock.patch.object(finn.xsi, "ensure_available", lambda: True), \\
            mock.patch.object(rf, "DependencyUpdater", NoUpdates):
        rf.build.main(["--accept-defaults", "-b", sys.argv[1], sys.argv[2], sys.argv[3]], standalone_mode=False)
    print(json.dumps({k: v for k, v in seen.items() if before.get(k) != v}))
"""

_OURS = """
    import json, os, sys
    from bnn_transfer.build_fpga.finn_env import prepare_finn
    before = dict(os.environ)
    prepare_finn(sys.argv[1])
    print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))
"""


def _fake_xilinx(root):
    """Folders shaped like a sourced Vivado/Vitis HLS 2024.2 install (executables that do nothing)."""
    env = {}
    for var, tool, sub in (("XILINX_VIVADO", "vivado", "Vivado"), ("XILINX_HLS", "vitis_hls", "Vitis_HLS")):
        home = root / "Xilinx" / sub / "2024.2"
        (home / "bin").mkdir(parents=True)
        (home / "bin" / tool).write_text("#!/bin/sh\nexit 0\n")
        (home / "bin" / tool).chmod(0o755)
        env[var] = str(home)
    env["PATH"] = os.pathsep.join([env["XILINX_VIVADO"] + "/bin", env["XILINX_HLS"] + "/bin", os.environ["PATH"]])
    return env


def _launcher_variables(changed):
    """The changed variables FINN's launcher code names (``finn/interface``, its settings and start-method
    modules): libraries imported on the way set others (scikit-learn: KMP_DUPLICATE_LIB_OK, ...)."""
    import finn

    root = Path(finn.__file__).parent
    source = "".join(p.read_text() for p in [*sorted((root / "interface").glob("*.py")), root / "util" / "settings.py",
                                              root / "util" / "multiprocessing.py"])
    return {k: v for k, v in changed.items() if '"%s"' % k in source or "'%s'" % k in source}


def test_parity_ignores_what_an_imported_library_sets():
    assert _launcher_variables({"KMP_DUPLICATE_LIB_OK": "True", "KMP_INIT_AT_FORK": "FALSE", "FINN_RTLLIB": "x",
                                "LD_LIBRARY_PATH": "y"}) == {"FINN_RTLLIB": "x", "LD_LIBRARY_PATH": "y"}


def test_launch_like_finn_restarts_with_the_libraries_and_selects_spawn(tmp_path):
    """`python -m build_fpga` on the Vivado path: the process image that runs has Vivado's libraries in the
    environment it started with (what ld.so read), and FINN's pools start by spawn."""
    pkg = tmp_path / "probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent("""
        import json, multiprocessing, os, sys
        from bnn_transfer.build_fpga.finn_env import launch_like_finn
        launch_like_finn("probe")
        with open("/proc/self/environ", "rb") as f:
            start = dict(e.split(b"=", 1) for e in f.read().split(b"\\0") if b"=" in e)
        print(json.dumps({"ld_at_start": start.get(b"LD_LIBRARY_PATH", b"").decode(), "argv": sys.argv[1:],
                          "start_method": multiprocessing.get_start_method()}))
    """))
    extra = _fake_xilinx(tmp_path)
    env = _env(tmp_path, extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    r = subprocess.run([sys.executable, "-m", "probe", "--out", "x"], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert extra["XILINX_VIVADO"] + "/lib/lnx64.o" in seen["ld_at_start"].split(os.pathsep)
    assert seen["argv"] == ["--out", "x"] and seen["start_method"] == "spawn"


@pytest.mark.parametrize("vivado", [True, False], ids=["with-vivado", "without-vivado"])
def test_prepare_finn_sets_what_finns_launcher_sets(tmp_path, vivado):
    """Environment parity: the variables `finn build` exports before building == those prepare_finn exports."""
    extra = _fake_xilinx(tmp_path) if vivado else {}
    settings = tmp_path / "settings.yaml"
    settings.write_text("finn_deps: %s\n" % (tmp_path / "deps"))
    extra.update(FINN_SETTINGS=str(settings), LD_LIBRARY_PATH="/opt/some/lib")
    flow = tmp_path / "flow.yaml"
    flow.write_text("output_dir: out\nsynth_clk_period_ns: 10.0\ntarget_fps: 1\nfpga_part: xc7z020clg400-1\n"
                    "generate_outputs: [estimate_reports]\n")
    (tmp_path / "model.onnx").write_bytes(b"")
    build = tmp_path / "build"
    launcher = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LAUNCHER), str(build / "finn_tmp"), str(flow),
         str(tmp_path / "model.onnx")],
        cwd=str(tmp_path), env=_env(tmp_path, extra), capture_output=True, text=True, timeout=120)
    assert launcher.returncode == 0, launcher.stderr[-3000:] + launcher.stdout[-3000:]
    ours = subprocess.run([sys.executable, "-c", textwrap.dedent(_OURS), str(build)], cwd=str(tmp_path),
                          env=_env(tmp_path, extra), capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr[-3000:]
    theirs, mine = (_launcher_variables(json.loads(p.stdout.strip().splitlines()[-1])) for p in (launcher, ours))
    assert mine == theirs
    assert {"FINN_CUSTOM_HLS", "FINN_RTLLIB", "FINN_BUILD_DIR", "FINN_DEPS", "XILINX_LOCAL_USER_DATA"} <= set(mine)
    if vivado:
        assert mine["LD_LIBRARY_PATH"].split(os.pathsep)[:3] == [
            "/lib/x86_64-linux-gnu/", extra["XILINX_VIVADO"] + "/lib/lnx64.o",
            extra["XILINX_HLS"] + "/lnx64/tools/fpo_v7_1"]
        assert mine["PATH"].endswith(os.pathsep.join([extra["XILINX_VIVADO"] + "/bin", extra["XILINX_HLS"] + "/bin"]))
    else:
        assert "LD_LIBRARY_PATH" not in mine
