"""FINN's estimates for each preset's accelerator: the most img/s whose estimate fits the board.

``build_fpga.folding.search_max_fps`` (the search ``python -m build_fpga`` uses) runs the estimate flow
at FINN's smallest folding, searches the folding over every resource and refolds FINN with it; the
record carries img/s, LUT, BRAM18 and DSP (layers plus the FIFOs, width converters and DMAs the
hardware build adds) and the resource that binds. These are analytical estimates at the board's clock
(no synthesis). Next to them the usual reference point: finn-examples' CNV-W1A1 (a binary VGG-like
CIFAR-10 net) runs about 3,000 images/s on a Pynq-Z1, as published by the finn-examples project; that
is a literature anchor, not measured here.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from .measure import skipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ANCHOR = {"anchor": "finn-examples CNV-W1A1 on Pynq-Z1 (published, not measured here)", "anchor_fps": 3000}
PLAN = (  # preset, board, run in --quick
    ("tiny", "pynq-z2", True),
    ("z2", "pynq-z2", False),
)
Z2_TARGET = 3000  # img/s on the Pynq-Z2 at 100 MHz (issue #16)
# The paper preset is measured as a user runs it: the whole documented command, in a child process.
# (board, --clock-mhz, img/s target): each board at its default clock (150 MHz on the UltraScale+ boards,
# 100 MHz on the Pynq-Z2, build_fpga/boards.py), and the KV260 again at FINN's 100 MHz, where its DDR port
# (128 bits x clock) stays below 300 img/s. The Pynq-Z2's 64-bit port carries at most 115 img/s of the
# streamed fc1 and fc2: its target is 100 img/s (issue 25).
PAPER_RUNS = (("kv260", None, 300), ("zcu104", None, 300), ("kv260", 100, 300), ("pynq-z2", None, 100))
PAPER_TARGETS = {"wall_s": 600, "peak_rss_mb": 8192}
# What a Pynq-Z2 (512 MB: Linux, PYNQ and the DMA buffers) leaves to the host's Python, about 350 MB (issue 25): the
# peak RSS of `python -m host bench` streaming the bundle through the emulator, which holds the streamed layers'
# weights in memory as the pynq backend holds their DMA buffers, is checked against it on the boards that have 512 MB
HOST_RSS_TARGET_MB = 350
SMALL_BOARDS = ("pynq-z1", "pynq-z2")
PARTS = ("fifo", "dwc", "iodma")  # the kinds of estimates.interconnect rows
PAPER_REASON = ("the paper preset's estimate command takes minutes and GBs per board (the targets: <= 10 min, "
                "<= 8 GB); run with --with-paper-finn")


def _row(name, preset, board, est, wall_s):
    fits = not est.check_fit()
    rec = {"name": name, "kind": "estimate", "ours_s": None, "theirs_s": None, "speedup": None, "identical": None,
           "target": None, "met": None, "preset": preset, "board": board, "search_wall_s": round(wall_s, 1),
           "clock_mhz": est.clock_mhz, "binding": est.folding_search.binding,
           "binding_detail": est.folding_search.detail}
    if not fits:
        rec.update(fps=None, note="even the smallest folding leaves FINN's margins: %s" % "; ".join(est.check_fit()))
    else:
        rec.update(fps=round(est.fps), bottleneck=est.bottleneck)
        for r in ("lut", "bram18", "dsp"):
            res = getattr(est, r)
            rec.update({r: res.used, r + "_usable": res.usable, r + "_pct": round(res.percent, 1),
                        r + "_interconnect": res.interconnect})
    if preset == "z2" and board == "pynq-z2":
        rec.update(target=">= %d img/s within 70%% LUT, 80%% BRAM18, 80%% DSP" % Z2_TARGET,
                   met=bool(fits and est.fps >= Z2_TARGET))
    rec.update(ANCHOR)
    return rec


def paper_name(board, clock_mhz):
    return "build_fpga_estimate/paper/%s%s" % (board, "@%dMHz" % clock_mhz if clock_mhz else "")


def _wait_with_peak_rss(pid, interval_s=0.2):
    """(wait status, the child's own rusage, its peak RSS in MB). The peak is its VmHWM, read until it
    exits: ru_maxrss survives exec, so it would report this bench process's size at the fork, several GB
    once the paper network is built (host.benchmark.peak_rss_mb). VmHWM only grows, so a sample misses at
    most the last ``interval_s`` of growth."""
    peak_kb = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)  # this child's rusage (RUSAGE_CHILDREN mixes runs)
        if done:
            return status, usage, peak_kb / 1024.0
        try:
            with open("/proc/%d/status" % pid) as f:
                peak_kb = max([peak_kb] + [int(line.split()[1]) for line in f if line.startswith("VmHWM:")])
        except OSError:
            pass
        time.sleep(interval_s)


def host_streaming_rss_mb(bundle):
    """Peak RSS (MB) of ``python -m host bench --backends emulator --quick`` on ``bundle``, after its batches
    (``streaming_peak_rss_mb``: before the live loop and head training): the board's host process."""
    cmd = [sys.executable, "-m", "bnn_transfer.host", "bench", "--bundle", bundle, "--board", "", "--backends",
           "emulator", "--quick"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr.strip().splitlines()[-1:]))
    return json.loads(r.stdout)["streaming_peak_rss_mb"]["emulator"]


def paper_command(ctx, board, clock_mhz=None, fps_target=300):
    """``python -m build_fpga --export <paper export> --board BOARD --out D --estimate-only`` in a child
    process: its wall time, its peak RSS (its VmHWM), its report's two bounds (each checked against
    ``fps_target``) and its resources, BRAM18 split into the layers and what the build adds around them."""
    export = ctx.networks.get("paper").export_dir()
    out = os.path.join(ctx.workdir, "deploy_paper_%s_%s" % (board, clock_mhz or "default"))
    clock = ["--clock-mhz", str(clock_mhz)] if clock_mhz else []
    cmd = [sys.executable, "-m", "bnn_transfer.build_fpga", "--export", export, "--board", board, "--out", out,
           "--estimate-only", *clock]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        status, usage, rss = _wait_with_peak_rss(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError("%s failed: %s" % (" ".join(cmd), err.read().strip().splitlines()[-1:]))
    from bnn_transfer.build_fpga.estimate import Estimate

    with open(os.path.join(out, "report", "estimates.json"), encoding="utf-8") as f:
        est = Estimate.from_dict(json.load(f))
    ddr = est.ddr
    host_rss = host_streaming_rss_mb(out)
    small = board in SMALL_BOARDS
    gaps = [what for what, bad in (
        ("%.0f s > %d s" % (wall, PAPER_TARGETS["wall_s"]), wall > PAPER_TARGETS["wall_s"]),
        ("%.0f MB > %d MB" % (rss, PAPER_TARGETS["peak_rss_mb"]), rss > PAPER_TARGETS["peak_rss_mb"]),
        ("compute bound %.0f img/s" % est.fps, est.fps < fps_target),
        ("DDR bound %.0f img/s" % (est.ddr_fps or 0), (est.ddr_fps or est.fps) < fps_target),
        ("host streaming %.0f MB > %d MB" % (host_rss, HOST_RSS_TARGET_MB), small and host_rss > HOST_RSS_TARGET_MB))
        if bad]
    gaps += ["over FINN's margin: %s" % line for line in est.check_fit()]
    return {"name": paper_name(board, clock_mhz), "kind": "command", "ours_s": round(wall, 1),
            "gap": "; ".join(gaps) or None,
            "theirs_s": None, "speedup": None, "identical": None, "met": not gaps,
            "target": "<= %d s, <= %d MB peak RSS, >= %d img/s compute and DDR bound%s" % (
                PAPER_TARGETS["wall_s"], PAPER_TARGETS["peak_rss_mb"], fps_target,
                ", host streaming <= %d MB" % HOST_RSS_TARGET_MB if small else ""),
            "host_streaming_rss_mb": round(host_rss),
            "command": "python -m build_fpga --export <paper export> --board %s --out D --estimate-only%s" % (
                board, "".join(" " + c for c in clock)), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(rss), "fps": round(est.fps), "ddr_fps": round(est.ddr_fps) if est.ddr_fps else None,
            "streamed_layers": ddr["streamed_layers"], "weight_bytes_per_image": ddr["weight_bytes_per_image"],
            "ddr_bytes_per_s": ddr["bytes_per_s"], "clock_mhz": est.clock_mhz,
            "target_fps": est.target_fps, "lut": est.lut.used, "lut_usable": est.lut.usable,
            "bram18": est.bram18.used, "bram18_usable": est.bram18.usable, "uram": est.uram.used,
            "uram_usable": est.uram.usable, "dsp": est.dsp.used, "dsp_usable": est.dsp.usable,
            "bram18_by_part": dict(layers=est.bram18.layers, **{k: sum(x["bram18"] for x in est.interconnect
                                                                      if x["kind"] == k) for k in PARTS}),
            "fifo_strategy": est.fifo_strategy}


def run(ctx):
    for board, clock, fps_target in PAPER_RUNS:
        name = paper_name(board, clock)
        if not ctx.wanted(name):
            continue
        if ctx.quick or not ctx.with_paper_finn:
            yield skipped(name, PAPER_REASON)
            continue
        ctx.log("finn: %s: the whole estimate command (minutes)" % name)
        yield paper_command(ctx, board, clock, fps_target)
    for preset, board, in_quick in PLAN:
        name = "finn_estimate/%s/%s" % (preset, board)
        if not ctx.wanted(name):
            continue
        if ctx.quick and not in_quick:
            yield skipped(name, "--quick estimates the tiny preset only")
            continue
        from bnn_transfer.build_fpga.config import BuildConfig
        from bnn_transfer.build_fpga.folding import search_max_fps

        ctx.log("finn: %s, folding search (a minute for z2)" % name)
        net = ctx.networks.get(preset)
        out = os.path.join(ctx.workdir, "finn_%s_%s" % (preset, board))
        t0 = time.time()
        est, _ = search_max_fps(net.qonnx_path(), out, BuildConfig(board=board), log=ctx.log)
        yield _row(name, preset, board, est, time.time() - t0)
