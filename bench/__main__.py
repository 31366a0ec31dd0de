"""``python -m bench``: run the measurements, print JSON lines, write results.md and results.png."""

import contextlib
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback

from bnn_transfer.host.atomic import output_lock
from bnn_transfer.host.cli import ArgumentParser, command_name, run_cli
from bnn_transfer.host.errors import BnnError

DEFAULT_OUT = os.curdir  # not this package's folder: in an installed copy that is site-packages
# Thread pools of numpy's BLAS, torch (OpenMP) and MKL read these when they load, i.e. on first import.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    return args


def build_parser():
    ap = ArgumentParser(prog=command_name("bench"), description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, tiny preset only: a harness check in about a minute, not numbers to quote")
    ap.add_argument("--only", action="append", default=[], metavar="NAME-PREFIX",
                    help="run only measurements whose name starts with this (repeatable), e.g. pack_vs_finn")
    ap.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                    help="folder to write results.md, results.json and results.png into")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="threads for every tool (numpy's BLAS, torch, onnxruntime; default: all cores). On a "
                         "machine busy with other work, 1 gives stable numbers: multi-threaded calls then stall "
                         "on descheduled threads")
    ap.add_argument("--with-paper-finn", action="store_true",
                    help="also run the paper preset's estimate command for kv260 and zcu104 at their default "
                         "clock and kv260 at 100 MHz (minutes and up to ~5 GB each)")
    ap.add_argument("--demo-bundle", metavar="DIR",
                    help="the demo's deploy bundle (runs/demo/deploy/pynq-z2): also train heads on its features of "
                         "synthetic-transfer and measure transfer to real images (transfer/digits; default: none, "
                         "not measured)")
    ap.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the generated networks and data")
    return ap


def _json_stream():
    """A private handle on stdout for the JSON lines; fd 1 itself is pointed at stderr.

    FINN's builder, qonnx and brevitas print to stdout (some from C code); one stray line would
    break the one-JSON-object-per-line contract, so everything but our lines goes to stderr.
    """
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


WORK_PREFIX = "bnn-bench-"


@contextlib.contextmanager
def _work_dir():
    """A scratch folder named after this process, removed afterwards; first, those of bench runs that died
    without their cleanup (kill -9) are removed."""
    for old in glob.glob(os.path.join(tempfile.gettempdir(), WORK_PREFIX + "*")):
        m = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", os.path.basename(old))
        if m and not _alive(int(m.group(1))) and os.stat(old).st_uid == os.getuid():
            shutil.rmtree(old, ignore_errors=True)
    work = tempfile.mkdtemp(prefix="%s%d-" % (WORK_PREFIX, os.getpid()))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def measurement_names(modules, quick):
    """Every measurement a run could make: each module asks ``ctx.wanted`` before any work, so a context
    that records the names asked and wants none lists them all without measuring anything."""
    from .context import Context

    names = set()
    ctx = Context(quick=quick, workdir="", networks=None, with_paper_finn=True, demo_bundle="(listing)",
                  listing=names)
    for module in modules:
        for _ in module.run(ctx):
            pass
    return names


def check_scope(args, argv_before, mergeable):
    """Refuse (BnnError) to replace a report of another scope: a --quick run would replace a full run's
    rows with unquotable ones, an --only run a full run's with its fewer, unless the report keeps its
    records (``mergeable``: results.json), into which an --only run merges its rows."""
    if argv_before is None:
        return
    before = parse_args(argv_before)
    if args.only and not args.quick and not before.quick and mergeable:
        return
    scope = (bool(args.quick), sorted(args.only))
    if (bool(before.quick), sorted(before.only)) != scope:
        raise BnnError("%s: holds the report of `python -m bench%s`; this run (%s) would replace its rows: choose "
                       "another --out" % (os.path.join(args.out, "results.md"),
                                          "".join(" " + a for a in argv_before),
                                          " ".join(["--quick"] * args.quick + ["--only " + o for o in args.only])
                                          or "everything"))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        for var in THREAD_VARS:
            os.environ[var] = str(args.threads)
    # numpy, torch and onnxruntime are imported only now, after the thread settings
    from . import extraction, finn_estimates, head, packing, report, transfer
    from .context import Context
    from .measure import machine
    from .networks import Networks

    modules = (extraction, packing, head, transfer, finn_estimates)
    names = measurement_names(modules, args.quick)
    unknown = [p for p in args.only if not any(n.startswith(p) for n in names)]
    if unknown:
        raise BnnError("--only %s: matches no measurement (they are: %s)" % (unknown[0], ", ".join(sorted(names))))
    report.check_replaceable(args.out)  # fail now, not after the measurements
    check_scope(args, report.previous_argv(args.out), report.read_results(args.out) is not None)
    if args.demo_bundle:
        from bnn_transfer.host.bundle import load_bundle

        load_bundle(args.demo_bundle)  # fail now, not after half an hour of measurements
    out = _json_stream()
    t0 = time.perf_counter()
    threads = args.threads or os.cpu_count()
    start = machine(threads)
    start["argv"] = " ".join(["python -m bench"] + argv)
    if start["loadavg"][0] >= start["cores"] and threads > 1:
        Context.log("warning: load average %.1f on %d cores: multi-threaded timings will include stalls of "
                    "descheduled threads; --threads 1 measures the code, not the scheduler" % (
                        start["loadavg"][0], start["cores"]))
    records, failed = [], False
    os.makedirs(args.out, exist_ok=True)
    with output_lock(os.path.join(args.out, "results.md")), _work_dir() as work:
        ctx = Context(quick=args.quick, workdir=work, networks=Networks(work, args.seed), only=args.only,
                      with_paper_finn=args.with_paper_finn, demo_bundle=args.demo_bundle, seed=args.seed,
                      threads=threads)
        for module in modules:
            try:
                for rec in module.run(ctx):
                    if rec.get("met") is False and "gap" not in rec:
                        rec["gap"] = "outputs differ" if rec.get("identical") is False else "no explanation recorded"
                    records.append(rec)
                    out.write(json.dumps(rec) + "\n")
            except Exception as e:  # one broken measurement must not cost the others; the exit code says so
                failed = True
                traceback.print_exc()
                rec = {"name": module.__name__.rsplit(".", 1)[-1], "kind": "error", "ours_s": None, "theirs_s": None,
                       "speedup": None, "identical": None, "target": None, "met": None,
                       "error": "%s: %s" % (type(e).__name__, e)}
                records.append(rec)
                out.write(json.dumps(rec) + "\n")
        end = machine(threads)
        report.write(args.out, records, start, end, time.perf_counter() - t0, args.quick, args.only)
    Context.log("wrote %s, results.png and results.json (%.0f s; load average now %s)" % (
        os.path.join(args.out, "results.md"), time.perf_counter() - t0,
        "/".join("%.2f" % v for v in end["loadavg"])))
    out.close()
    return 1 if failed else 0


def cli():
    """The console script (pyproject.toml): one-line errors, exit code 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
