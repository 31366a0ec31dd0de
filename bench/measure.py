"""Timing helpers and the description of the machine a run was measured on.

Every speed ratio in ``bench/`` comes from :func:`side_by_side`: the contenders run in alternating
rounds (ours, theirs, ours, theirs, ...) and each keeps its best sample. The build machines are
shared, so the load changes during a run; alternating exposes both contenders to the same load, and
the minimum is the least disturbed estimate of what the code itself costs (a multi-threaded call
on 2 busy cores stalls whenever one of its threads is descheduled). Absolute seconds still depend
on the load: the report records it.
"""

import os
import platform
import sys
import time
from typing import Callable, Dict, List, Sequence

from bnn_transfer.host.benchmark import cpu_model
from bnn_transfer.host.manifest import package_versions

__all__ = ["side_by_side", "best_of", "once", "calls_per_sample", "machine", "comparison",
           "skipped", "fmt_seconds"]


def calls_per_sample(fn: Callable, min_time: float = 0.005) -> int:
    """How many back-to-back calls make one sample last ``min_time`` (timeit's autorange, doubling).

    Microsecond operations are timed over many calls per sample, otherwise the timer's and the
    scheduler's jitter would be the measurement.
    """
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_time or number >= 1 << 20:
            return number
        number *= 2


def side_by_side(fns: Sequence[Callable], repeat: int = 5, calls: int = 3, settle: float = 0.0, warmup: int = 1,
                 min_time: float = 0.005, number: int = None) -> List[float]:
    """Best seconds per call of each function, measured in ``repeat`` alternating rounds.

    A round gives each function in turn ``settle`` seconds of sleep, one untimed call, then ``calls``
    timed samples of ``number`` calls each (default: enough for ``min_time`` per sample, found for
    the fastest function and used for all). The sleep matters for multi-threaded contenders in one
    process: OpenBLAS', OpenMP's and onnxruntime's worker threads keep spinning for a while after a
    call returns and would steal the cores from whoever runs next (measured: the emulator 100x slower
    right after a torch call on 2 cores). The untimed call wakes the function's own threads up.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    if number is None:
        number = min(calls_per_sample(fn, min_time) for fn in fns)
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if settle:
                time.sleep(settle)
            fn()
            for _ in range(calls):
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - t0) / number)
    return best


def best_of(fn: Callable, repeat: int = 5, calls: int = 3, settle: float = 0.0) -> float:
    """Best seconds per call of one function (see :func:`side_by_side`)."""
    return side_by_side([fn], repeat, calls, settle)[0]


def once(fn: Callable):
    """(seconds, result) of a single call: for work too slow to repeat (qonnx, head training)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _blas() -> List[Dict]:
    """numpy's BLAS (library, version, threads), via threadpoolctl (installed with scikit-learn)."""
    try:
        import numpy  # noqa: F401  (loads the BLAS threadpoolctl inspects)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads")}
            for p in threadpool_info() if p.get("user_api") == "blas"]


def machine(threads: int = None) -> Dict:
    """What the numbers were measured on: CPU, cores, load, library versions and thread counts."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        **package_versions("onnxruntime", "qonnx", "brevitas", "finn-plus", "scikit-learn"),
        "numpy": np.__version__,
        "blas": _blas(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads": threads,
        "platform": platform.platform(),
        "argv": " ".join(sys.argv),
    }


def comparison(name: str, ours_s: float, theirs_s: float, identical, target: str = None, met=None, **extra) -> Dict:
    """One measurement line: ``speedup = theirs_s / ours_s`` (> 1: ours is faster)."""
    rec = {"name": name, "kind": "speed", "ours_s": ours_s, "theirs_s": theirs_s,
           "speedup": round(theirs_s / ours_s, 2) if ours_s and theirs_s else None,
           "identical": identical, "target": target, "met": met}
    rec.update(extra)
    return rec


def skipped(name: str, reason: str) -> Dict:
    """A line for a measurement that was not run, and why (the report lists it)."""
    return {"name": name, "kind": "skipped", "ours_s": None, "theirs_s": None, "speedup": None, "identical": None,
            "target": None, "met": None, "reason": reason}


def fmt_seconds(s) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return "%.1f µs" % (s * 1e6)
    if s < 1:
        return "%.2f ms" % (s * 1e3) if s < 0.1 else "%.0f ms" % (s * 1e3)
    return "%.2f s" % s
