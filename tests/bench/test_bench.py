"""The benchmark harness: its output format and its bookkeeping, never its timings."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_TOOLS = all(importlib.util.find_spec(m) is not None
                 for m in ("finn", "qonnx", "brevitas", "torch", "onnxruntime", "sklearn"))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs finn-plus, qonnx, brevitas, torch, onnxruntime, sklearn")

REQUIRED = ("name", "kind", "ours_s", "theirs_s", "speedup", "identical", "target", "met")
MEASURED = ("emulator_vs_torch/tiny/b1", "emulator_vs_torch/tiny/b64", "emulator_vs_onnxruntime/tiny/b1",
            "emulator_vs_onnxruntime/tiny/b64", "emulator_vs_qonnx/tiny/b1", "pack_vs_finn/uint8",
            "pack_vs_finn/uint8-from-uint8", "pack_vs_finn/bipolar", "unpack_vs_finn/bipolar",
            "head_vs_sklearn/flowers-size", "head_peak_rss/flowers-size", "finn_estimate/tiny/pynq-z2")


def bench(tmp_path, *args, timeout=900, cwd=ROOT):
    """Run ``python -m bench`` with its scratch files (exports, FINN builds) under ``tmp_path``."""
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]  # every stdout line must be one JSON object
    return res, lines


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    repo_results = os.path.join(ROOT, "bench", "results.md")
    before = os.stat(repo_results).st_mtime_ns if os.path.exists(repo_results) else None
    # one thread per tool: the harness is what is checked, and CI machines are shared
    res, lines = bench(tmp, "--quick", "--threads", "1", "--out", str(tmp / "out"))
    after = os.stat(repo_results).st_mtime_ns if os.path.exists(repo_results) else None
    return res, lines, tmp / "out", before == after


@needs_tools
@pytest.mark.slow
def test_quick_run_prints_one_complete_json_object_per_measurement(quick):
    res, lines, _, _ = quick
    assert res.returncode == 0, res.stderr[-3000:]
    by_name = {r["name"]: r for r in lines}
    assert len(by_name) == len(lines), "duplicate measurement names"
    assert set(MEASURED) <= set(by_name)
    for r in lines:
        assert all(k in r for k in REQUIRED), r
        assert r["kind"] in ("speed", "memory", "estimate", "accuracy", "command", "skipped"), r
        if r["kind"] == "speed":
            assert r["ours_s"] > 0 and r["theirs_s"] > 0
            assert r["speedup"] == pytest.approx(r["theirs_s"] / r["ours_s"], abs=0.01)
        if r["met"] is False:
            assert isinstance(r.get("gap"), str) and r["gap"], r
        if r["kind"] == "skipped":
            assert r["reason"]
    # --quick measures the tiny preset; the others are reported as skipped, with the reason
    assert by_name["emulator_vs_torch/paper"]["kind"] == "skipped"
    assert by_name["build_fpga_estimate/paper/kv260@100MHz"]["kind"] == "skipped"
    assert by_name["build_fpga_estimate/paper/zcu104"]["kind"] == "skipped"
    assert by_name["transfer/digits"]["kind"] == "skipped" and "--demo-bundle" in by_name["transfer/digits"]["reason"]


@needs_tools
@pytest.mark.slow
def test_outputs_that_must_match_do_match(quick):
    _, lines, _, _ = quick
    by_name = {r["name"]: r for r in lines}
    exact = [r for r in lines if r["name"].startswith(("emulator_vs_", "pack_vs_", "unpack_vs_"))
             and r["kind"] == "speed"]
    assert len(exact) == 9
    for r in exact:
        assert r["identical"] is True, r
    for n in ("emulator_vs_torch/tiny/b1", "emulator_vs_torch/tiny/b64"):
        assert by_name[n]["mismatched_bits"] == 0 and by_name[n]["torch_int_identical"] is True
    assert by_name["emulator_vs_qonnx/tiny/b1"]["images"] >= 1 and by_name["emulator_vs_qonnx/tiny/b1"]["per_image"]


@needs_tools
@pytest.mark.slow
def test_head_memory_and_finn_lines_carry_their_fields(quick):
    _, lines, _, _ = quick
    by_name = {r["name"]: r for r in lines}
    r = by_name["head_vs_sklearn/flowers-size"]
    assert 0 <= r["ours_top1"] <= 1 and 0 <= r["theirs_top1"] <= 1
    assert r["ours_top1"] > 1.5 / r["classes"], "the generated task must be learnable"
    assert r["ours_l2_chosen_by"] == "held-out accuracy" and r["ours_passes"] >= 2
    rss = by_name["head_peak_rss/flowers-size"]
    assert rss["foreign_modules"] == [] and rss["rss_mb"] >= rss["import_rss_mb"] > 0
    est = by_name["finn_estimate/tiny/pynq-z2"]
    assert est["kind"] == "estimate" and est["fps"] > 0 and 0 < est["lut"] <= est["lut_usable"]
    assert 0 < est["bram18"] <= est["bram18_usable"] and est["anchor_fps"] == 3000


@needs_tools
@pytest.mark.slow
def test_report_and_plot_go_to_out_only(quick):
    _, lines, out, repo_untouched = quick
    md = (out / "results.md").read_text()
    assert "| measurement | ours | theirs | speedup | bit-exact | target | met |" in md
    assert "Load average" in md and "cores" in md and "numpy" in md and "threads" in md
    for r in lines:
        assert r["name"] in md
    for r in lines:
        if r["met"] is False:
            assert r["gap"][:40] in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert repo_untouched, "--out was not respected: bench/results.md of the repo changed"


@needs_tools
def test_only_runs_the_named_measurements(tmp_path):
    res, lines = bench(tmp_path, "--quick", "--only", "pack_vs_finn/bipolar", "--only", "unpack_vs",
                       "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["name"] for r in lines] == ["pack_vs_finn/bipolar", "unpack_vs_finn/bipolar"]
    assert all(r["identical"] for r in lines)
    assert (tmp_path / "o" / "results.md").exists()


def test_bad_demo_bundle_is_a_one_line_error(tmp_path):
    res, lines = bench(tmp_path, "--quick", "--demo-bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                       timeout=120)
    assert res.returncode == 2 and lines == []
    assert res.stderr.strip().splitlines()[-1].startswith("error: %s" % (tmp_path / "missing"))


def test_an_out_holding_results_the_bench_did_not_write_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("my notes\n")
    res, lines = bench(tmp_path, "--quick", "--out", str(out), timeout=120)
    assert res.returncode == 2 and lines == []
    assert res.stderr.strip().splitlines()[-1] == (
        "error: %s: exists and was not written by python -m bench; refusing to replace it (choose another --out)"
        % (out / "results.md"))
    assert (out / "results.md").read_text() == "my notes\n"

    from bnn_transfer.bench.report import check_replaceable

    (out / "results.md").unlink()
    (out / "results.png").write_bytes(b"a plot of mine")
    with pytest.raises(BnnError, match="results.png: exists without the results.md"):
        check_replaceable(str(out))
    check_replaceable(os.path.join(ROOT, "bench"))  # the committed report, which python -m bench wrote: replaced


def test_side_by_side_times_every_function_per_call():
    from bnn_transfer.bench.measure import side_by_side

    calls = [0, 0]

    def a():
        calls[0] += 1

    def b():
        calls[1] += 1
        sum(range(2000))

    ta, tb = side_by_side([a, b], repeat=3, calls=2, number=5)
    assert 0 < ta < tb
    assert calls == [1 + 3 * (1 + 2 * 5)] * 2  # warm-up, then per round one untimed call and 2 samples of 5


def test_generated_head_features_have_the_requested_shape_and_structure():
    from bnn_transfer.bench.head import generate
    from bnn_transfer.host.features import unpack_features

    xtr, ytr, xte, yte = generate(300, 4, 10, 2048, seed=3)
    assert xtr.shape == (300, 256) and xtr.dtype == np.uint8 and ytr.shape == (300,)
    assert xte.shape == (40, 256) and np.array_equal(np.bincount(yte), [4] * 10)
    counts = np.bincount(ytr, minlength=10)
    assert counts.min() >= 2 and counts.max() > counts.min()  # unbalanced, as Flowers102
    again = generate(300, 4, 10, 2048, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip((xtr, ytr, xte, yte), again))
    # classes are there but noisy: the nearest training-class mean is right far above chance, not always
    x, xt = unpack_features(xtr, 2048), unpack_features(xte, 2048)
    means = np.stack([x[ytr == c].mean(axis=0) for c in range(10)])
    assert 0.5 < np.mean(np.argmax(xt @ means.T, axis=1) == yte) < 0.95


def test_report_lists_every_gap_and_skip():
    from bnn_transfer.bench.report import markdown

    m = {"argv": "python -m bench", "cpu": "cpu", "cores": 2, "loadavg": [1.0, 2.0, 3.0], "python": "3.11",
         "numpy": "2", "blas": [{"library": "openblas", "version": "0.3", "threads": 2}], "torch": "2",
         "torch_threads": 2, "onnxruntime": "1", "qonnx": "1", "brevitas": "0", "finn-plus": "1",
         "scikit-learn": "1"}
    recs = [
        {"name": "a/b", "kind": "speed", "ours_s": 1e-3, "theirs_s": 2e-3, "speedup": 2.0, "identical": True,
         "target": ">= 1x", "met": True},
        {"name": "c/d", "kind": "speed", "ours_s": 1.0, "theirs_s": 0.5, "speedup": 0.5, "identical": None,
         "target": "not slower", "met": False, "gap": "because of reasons", "ours_top1": 0.5, "theirs_top1": 0.6},
        {"name": "e", "kind": "skipped", "reason": "too slow", "ours_s": None, "theirs_s": None, "speedup": None,
         "identical": None, "target": None, "met": None},
        {"name": "transfer/digits", "kind": "accuracy", "ours_s": None, "theirs_s": None, "speedup": None,
         "identical": None, "target": "frozen > random", "met": False, "gap": "frozen trails the pixels",
         "preset": "small", "train": 10, "test": 5, "classes": 2, "input_size": 32, "feature_width": 256,
         "rows": {"frozen": {"host": {"top1": 0.5, "top5": 1.0}, "sklearn": {"top1": 0.4, "top5": 1.0}},
                  "random": {"host": {"top1": 0.3, "top5": 1.0}, "sklearn": {"top1": 0.2, "top5": 1.0}},
                  "pixels": {"sklearn": {"top1": 0.9, "top5": 1.0}}},
         "by_layer": {"frozen": {"conv1": {"width": 8, "top1": 0.5}}, "random": {"conv1": {"width": 8, "top1": 0.25}}}},
        {"name": "build_fpga_estimate/paper/kv260", "kind": "command", "ours_s": 369.0, "cpu_s": 127.0,
         "theirs_s": None, "speedup": None, "identical": None, "target": ">= 300 img/s", "met": False,
         "gap": "DDR bound 230 img/s", "peak_rss_mb": 5056, "fps": 250, "ddr_fps": 230,
         "streamed_layers": ["fc1", "fc2"], "lut": 1, "lut_usable": 2, "bram18": 1, "bram18_usable": 2, "uram": 1,
         "uram_usable": 2},
    ]
    md = markdown(recs, m, m, 12.0, quick=False)
    assert "## Targets not met (3 of 4)" in md  # every kind of record with a target counts
    assert "- `build_fpga_estimate/paper/kv260` (>= 300 img/s): DDR bound 230 img/s" in md
    assert "| `a/b` | 1.00 ms | 2.00 ms | 2.0x | yes | >= 1x | yes |" in md
    assert "- `c/d` (not slower): because of reasons" in md and "50.0%" in md
    assert "- skipped `e`: too slow" in md and "1.00/2.00/3.00" in md
    assert ("| `transfer/digits` (`small`, 10 train / 5 test, 2 classes, 32 px, 256 features) | 50.0% / 100.0% | "
            "40.0% / 100.0% | 30.0% / 100.0% | 20.0% / 100.0% | 90.0% / 100.0% | **no** |") in md
    assert "- `transfer/digits` (frozen > random): frozen trails the pixels" in md
    assert ("Host's head on each layer's output for `transfer/digits`, top-1: frozen backbone conv1 (8 bits) 50.0%; "
            "random backbone conv1 (8 bits) 25.0%.") in md


def test_paper_rows_show_dsp_bram_by_part_and_the_fifo_strategy():
    """A paper command row shows what the Pynq-Z2 needs to read its fit: DSPs and BRAM18 split into the
    layers, FIFOs, width converters and DMAs, and the FIFO strategy those rows price; each board's row
    is checked against its own img/s target."""
    from bnn_transfer.bench.finn_estimates import PAPER_RUNS
    from bnn_transfer.bench.report import markdown

    m = {"argv": "python -m bench", "cpu": "cpu", "cores": 2, "loadavg": [1.0, 1.0, 1.0], "python": "3.11",
         "numpy": "2", "blas": [], "torch": "2", "torch_threads": 2, "onnxruntime": "1", "qonnx": "1",
         "brevitas": "0", "finn-plus": "1", "scikit-learn": "1"}
    row = {"name": "build_fpga_estimate/paper/pynq-z2", "kind": "command", "ours_s": 286.0, "cpu_s": 250.0,
           "theirs_s": None, "speedup": None, "identical": None, "target": ">= 100 img/s", "met": True, "gap": None,
           "peak_rss_mb": 4664, "fps": 125, "ddr_fps": 115, "streamed_layers": ["fc1", "fc2"], "lut": 29840,
           "lut_usable": 37240, "bram18": 218, "bram18_usable": 224, "uram": 0, "uram_usable": 0, "dsp": 44,
           "dsp_usable": 176, "bram18_by_part": {"layers": 210, "fifo": 0, "dwc": 0, "iodma": 8},
           "fifo_strategy": "force_minimal_fifos", "host_streaming_rss_mb": 175}
    md = markdown([row], m, m, 300.0, quick=False)
    assert ("| `build_fpga_estimate/paper/pynq-z2` | 286 s (250 s) | 4,664 MB | 125 | 115 | fc1, fc2 | "
            "29,840 / 37,240 | 218 / 224 (210 + 0 + 0 + 8) | 0 / 0 | 44 / 176 | 175 MB | yes |") in md
    assert "`--fifo force_minimal_fifos`" in md
    assert ("pynq-z2", None, 100) in PAPER_RUNS and ("kv260", None, 300) in PAPER_RUNS


def test_a_commands_peak_rss_is_its_own_not_the_large_parents():
    """ru_maxrss survives exec: a child of a 600 MB process would report 600 MB. The paper estimate runs
    as a child of the bench, which holds the paper network by then."""
    import subprocess
    import sys

    from bnn_transfer.bench.finn_estimates import _wait_with_peak_rss

    ballast = bytearray(600 << 20)  # noqa: F841 (the parent's size is the point)
    proc = subprocess.Popen([sys.executable, "-c", "x = bytearray(200 << 20); import time; time.sleep(0.5)"])
    status, usage, rss = _wait_with_peak_rss(proc.pid)
    assert os.waitstatus_to_exitcode(status) == 0
    assert 200 < rss < 400 and usage.ru_maxrss / 1024 > 600


def test_readme_quotes_the_transfer_table_of_bench_results(golden):
    """README.md's transfer table is bench/results.md's (python -m bench --demo-bundle ...), copied, never typed."""
    with open(os.path.join(ROOT, "bench", "results.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("Transfer to real images:")
    end = text.index("\n\n", text.index("\n|", start))
    golden.check("bench_transfer.md", text[start:end + 1])


def test_build_fpga_readme_quotes_the_paper_table_of_bench_paper_results(golden):
    """build_fpga/README.md's per-board table of the paper preset is bench/paper/results.md's (python -m bench
    --only build_fpga_estimate/paper --with-paper-finn --out bench/paper), copied, never typed."""
    with open(os.path.join(ROOT, "bench", "paper", "results.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("The `paper` estimate command per board")
    end = text.index("\n\n", text.index("\n|", start))
    golden.quote("bench_paper.md", text[start:end + 1])


def test_an_only_matching_no_measurement_is_a_usage_error(tmp_path):
    res, lines = bench(tmp_path, "--only", "pakc", "--out", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2 and lines == [] and not (tmp_path / "o").exists()
    assert res.stderr.strip().splitlines()[-1].startswith("error: --only pakc: matches no measurement (they are: ")
    assert "pack_vs_finn/bipolar" in res.stderr


def test_a_narrower_run_does_not_replace_a_wider_report(tmp_path):
    """--only or --quick over a full report would replace its rows with fewer or unquotable ones."""
    from bnn_transfer.bench.report import OWN_HEAD

    out = tmp_path / "o"
    out.mkdir()
    full = OWN_HEAD + " --threads 1 --demo-bundle x` on 2026-12-07 in 300 s.\n\n| rows |\n"
    (out / "results.md").write_text(full)
    for args, what in ((["--quick"], "--quick"), (["--only", "pack_vs_finn"], "--only pack_vs_finn")):
        res, lines = bench(tmp_path, *args, "--out", str(out), timeout=120)
        assert res.returncode == 2 and lines == [], res.stderr[-2000:]
        assert res.stderr.strip().splitlines()[-1] == (
            "error: %s: holds the report of `python -m bench --threads 1 --demo-bundle x`; this run (%s) would "
            "replace its rows: choose another --out" % (out / "results.md", what))
    assert (out / "results.md").read_text() == full


def test_quick_writes_to_the_current_folder_and_never_over_the_committed_report(tmp_path):
    """The default --out is where the command runs (not bench/'s folder, site-packages once installed); a
    --quick run there is refused where it holds a full report, as bench/ does."""
    committed = tmp_path / "committed"
    committed.mkdir()
    for name in ("results.md", "results.png"):
        shutil.copyfile(os.path.join(ROOT, "bench", name), committed / name)
    res, lines = bench(tmp_path, "--quick", timeout=120, cwd=committed)
    assert res.returncode == 2 and lines == [], res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: %s: holds the report of `python -m bench " % os.path.join(os.curdir, "results.md"))
    assert line.endswith("this run (--quick) would replace its rows: choose another --out")
    for name in ("results.md", "results.png"):
        with open(os.path.join(ROOT, "bench", name), "rb") as f:
            assert (committed / name).read_bytes() == f.read()
    assert sorted(os.listdir(committed)) == ["results.md", "results.png"]


def test_a_second_bench_on_the_same_out_is_refused(tmp_path):
    from bnn_transfer.host.atomic import output_lock

    out = tmp_path / "o"
    out.mkdir()
    with output_lock(str(out / "results.md")):
        res, lines = bench(tmp_path, "--quick", "--only", "pack_vs_finn/bipolar", "--out", str(out), timeout=120)
    assert res.returncode == 2 and lines == [] and "results.md" in res.stderr.strip().splitlines()[-1]
    assert not (out / "results.md").exists()


def test_scratch_folders_of_killed_runs_are_removed(tmp_path, monkeypatch):
    import tempfile

    import bnn_transfer.bench.__main__ as bm
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ("bnn-bench-%s-x1" % dead.stdout.strip())
    live = tmp_path / ("bnn-bench-%d-x2" % os.getppid())
    for d in (stale, live):
        (d / "paper_export").mkdir(parents=True)
    with bm._work_dir() as work:
        assert os.path.basename(work).startswith("bnn-bench-%d-" % os.getpid()) and os.path.isdir(work)
        assert not stale.exists() and live.exists()
    assert not os.path.exists(work)


def test_an_only_run_replaces_its_own_rows_of_a_full_report_and_keeps_the_others(tmp_path):
    """`python -m bench --only transfer` replaced the committed full report with a one-row one."""
    from bnn_transfer.bench.report import read_results, write

    def machine(argv):
        return {"argv": argv, "cpu": "cpu", "cores": 2, "loadavg": [0.5, 0.5, 0.5], "python": "3.11", "numpy": "2",
                "blas": [], "torch": "2", "torch_threads": 1, "onnxruntime": "1", "qonnx": "1", "brevitas": "0",
                "finn-plus": "1", "scikit-learn": "1"}

    def speed(name, ours):
        return {"name": name, "kind": "speed", "ours_s": ours, "theirs_s": 1.0, "speedup": 1.0 / ours,
                "identical": True, "target": ">= 1x", "met": ours <= 1.0}

    full = [speed("pack_vs_finn/uint8", 0.5), speed("pack_vs_finn/bipolar", 0.5), speed("unpack_vs_finn/bipolar", 2.0)]
    out = str(tmp_path / "o")
    write(out, full, machine("python -m bench"), machine("python -m bench"), 100.0, False)
    write(out, [speed("pack_vs_finn/bipolar", 0.25)], machine("python -m bench --only pack_vs_finn/b"),
          machine("x"), 3.0, False, only=["pack_vs_finn/b"])
    results = read_results(out)
    assert [(r["name"], r["ours_s"]) for r in results["records"]] == [
        ("pack_vs_finn/uint8", 0.5), ("pack_vs_finn/bipolar", 0.25), ("unpack_vs_finn/bipolar", 2.0)]
    md = (tmp_path / "o" / "results.md").read_text()
    assert md.startswith("# Benchmarks\n\nGenerated by `python -m bench` on ")  # the full run's line stays first
    assert "Rows under `pack_vs_finn/b` remeasured by `python -m bench --only pack_vs_finn/b` on " in md
    assert "| `pack_vs_finn/uint8` |" in md and "| `pack_vs_finn/bipolar` | 250 ms |" in md
    assert "## Targets not met (1 of 3)" in md
    # a new full run starts the report over
    write(out, full[:1], machine("python -m bench"), machine("python -m bench"), 1.0, False)
    assert len(read_results(out)["runs"]) == 1 and "remeasured" not in (tmp_path / "o" / "results.md").read_text()


def test_the_host_streaming_rss_of_a_bundle_is_its_host_bench_peak(tmp_path):
    """The paper rows' host RSS: python -m host bench's own process, at least numpy's size and below a board's."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "host"))
    from fake_pynq import make_bundle

    from bnn_transfer.bench.finn_estimates import HOST_RSS_TARGET_MB, host_streaming_rss_mb

    rss = host_streaming_rss_mb(make_bundle(tmp_path / "bundle"))
    assert 20 < rss < HOST_RSS_TARGET_MB
    with pytest.raises(RuntimeError, match="host bench .* failed: .*missing: bundle directory not found"):
        host_streaming_rss_mb(str(tmp_path / "missing"))
