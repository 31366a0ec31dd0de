"""Running the flow's commands as a user types them: one at a time, or independent ones side by side.

A stage's result is the one JSON object it prints on stdout. A stage run alone shows its progress on
our stderr; stages run side by side write their stderr to a log file each (their progress bars would
interleave), named in the failure message when one fails.
"""

import json
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

from bnn_transfer.host.errors import BnnError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torch picks its CPU kernels by instruction set, and an AVX-512 kernel rounds differently from an AVX2
# one: pinned to AVX2 (what x86 machines of the last decade have), a stage computes the same bits on
# AVX-512 and AVX2 machines. On this project's AVX-512 machine a pretraining epoch took 24 s pinned
# (with deterministic algorithms) where an unpinned development run took 22 s. numpy's image rendering
# needs no pin: it gave the same pixels with AVX-512 disabled. A value the user set is kept.
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def stage_env(**extra):
    """A stage's environment: ours, with the pins under the user's values and ``extra`` over them."""
    env = dict(PINNED)
    env.update(os.environ)
    env.update(extra)
    return env


def _command(args: Sequence[str]) -> List[str]:
    """``python -m <args>`` by the stage's namespaced name: an installed copy runs its own stages, not another
    distribution's ``train`` (in the checkout both names are the same files)."""
    return [sys.executable, "-m", "bnn_transfer." + args[0], *args[1:]]


def _result(out, t0, log):
    out = out.strip()
    log("  %s (%.0f s)" % (out, time.time() - t0))
    return json.loads(out) if out.startswith("{") else None


def run_stage(args: List[str], log) -> Optional[dict]:
    """Run ``python -m <args>`` from the repo root; its result: the JSON object it printed, if it printed one."""
    log("$ python -m " + " ".join(args))
    t0 = time.time()
    proc = subprocess.run(_command(args), cwd=ROOT, stdout=subprocess.PIPE, text=True, env=stage_env())
    if proc.returncode != 0:
        raise BnnError("stage failed (exit %d): python -m %s" % (proc.returncode, " ".join(args)))
    return _result(proc.stdout, t0, log)


def run_side_by_side(stages: Sequence[Tuple], jobs, log_dir: str, log) -> List[Optional[dict]]:
    """Run stages ``(name, args)`` or ``(name, args, then)``, at most ``jobs`` at once (an int, or a callable
    read before each launch); the last result of each, in the order given.

    ``then(result)`` gives the next ``(name, args[, then])`` of the same chain (a stage whose arguments
    depend on the one before), launched before any other waiting stage. Each stage's stderr goes to
    ``log_dir/<name>.log``, and runs one BLAS/OpenMP thread (side by side, more would only contend for
    the cores). The first failure stops the launching of new stages, lets the running ones finish and
    raises BnnError naming the stage and its log.
    """
    if not callable(jobs) and jobs <= 1:
        results = []
        for stage in stages:
            res = run_stage(stage[1], log)
            while len(stage) > 2:
                stage = stage[2](res)
                res = run_stage(stage[1], log)
            results.append(res)
        return results
    limit = jobs if callable(jobs) else (lambda: jobs)
    os.makedirs(log_dir, exist_ok=True)
    env = stage_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results: List[Optional[dict]] = [None] * len(stages)
    pending = list(enumerate(stages))
    running = []
    failed = None
    while pending or running:
        while pending and len(running) < max(1, limit()) and failed is None:
            k, stage = pending.pop(0)
            name, args = stage[0], stage[1]
            path = os.path.join(log_dir, name + ".log")
            log("$ python -m %s  (log: %s)" % (" ".join(args), path))
            err = open(path, "w", encoding="utf-8")
            proc = subprocess.Popen(_command(args), cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=env)
            running.append((k, stage, proc, err, path, time.time()))
        if failed is not None and not running:
            break
        done = [r for r in running if r[2].poll() is not None]
        if not done:
            time.sleep(0.2)
            continue
        for entry in done:
            running.remove(entry)
            k, stage, proc, err, path, t0 = entry
            out, _ = proc.communicate()
            err.close()
            if proc.returncode != 0:
                failed = failed or "stage failed (exit %d): python -m %s (its log: %s)" % (
                    proc.returncode, " ".join(stage[1]), path)
                continue
            log("[%s]" % stage[0])
            results[k] = _result(out, t0, log)
            if len(stage) > 2:
                pending.insert(0, (k, stage[2](results[k])))
    if failed is not None:
        raise BnnError(failed)
    return results
