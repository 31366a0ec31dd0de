"""The paper's Table 2 in one command: every row trained, resumable row by row, reported beside the paper's.

    python -m train table2 --imagenet DIR --flowers DIR --birds DIR --indoor DIR --out REPORT_DIR
    python -m train table2 --synthetic --out REPORT_DIR          # generated stand-ins, tiny preset, CPU

Rows (each one ``FitConfig`` + ``fit.run``; nothing here trains by itself):

- pretraining on ImageNet: the float network (``precision fp``) and the binary one (binary head);
- for each of Flowers102, CUB-200 ("Birds") and MIT Indoor 67 ("Indoor scenes"):
  FP trained from scratch; FP fine-tuned from the FP ImageNet run; binary trained from scratch;
  binary fine-tuned with a binary last layer (a) and with a float last layer (b). Fine-tuning is the
  paper's: everything before ``fc3`` frozen (the binary backbone through its integer definition),
  only the last layer retrained (``fit.run(cfg, "finetune")``).

Every row is its own run directory, ``REPORT_DIR/runs/<row-id>/``. A rerun skips finished rows
(``fit.run`` recognises an identical finished run), resumes an interrupted one from its last
checkpoint, and refuses a directory holding a run with other parameters (or fine-tuned from an
earlier pretraining) instead of silently mixing results. ``--imagenet-run RUN_DIR`` (up to one fp
and one binary run of the same preset) replaces the pretraining of that precision.

Outputs, rewritten after every row so an interrupted command leaves a partial table ("—" where a
row has not finished): ``table2.md`` (ours / paper per cell, shaped like the paper's table),
``table2.json`` (the directory's manifest: accuracies as fractions, the paper's too, the sha256 of
every row's run.json) and, at the end of the command, ``table2.png`` (top-1 ours vs paper).

``--synthetic`` swaps the four datasets for generated stand-ins (``table2_rows.SYNTHETIC_STANDINS``; the tiny
preset and a few epochs) so the whole command runs end to end on a CPU. The paper's numbers are
still printed beside ours, but the two are not comparable: the stand-ins only exercise the flow.

Expected compute for the real run (an estimate, not a measurement)
------------------------------------------------------------------
About 24 GPU-hours on one H100-class GPU fed by 16 CPU cores, with the default epochs (pretraining
60, from scratch 100, fine-tuning 30) and the default workers (all cores but two); plan for 15-40.

Basis. The ``paper`` preset is AlexNet without groups: 1.14 GMAC per 224 px image forward, about
6.8 GFLOP per training image (forward + backward), so an ImageNet epoch (1.28M images) is 8.7 PFLOP,
under a minute of H100 arithmetic even at 25% utilisation. Brevitas simulates the binary layers in
float, so the binary network costs about what its float twin does. The bound is the input pipeline:
decoding and resizing ImageNet JPEGs with PIL runs at roughly 150 images/s per core, ~2,000 images/s
with 14 workers, i.e. ~11 minutes per epoch. Two pretrainings x 60 epochs x (1.28M train + 50k test
images) at that rate are ~22 hours. The 15 target rows see 25.7k images per epoch over the three
datasets (17.5k train + 8.2k test, Table 1): 2 x 100 epochs from scratch and 3 x 30 epochs of
fine-tuning are 7.5M images, ~1 hour. With ``--imagenet-run`` for both networks only that hour
remains. ``--image-cache`` decodes each image once: a clear win for the target datasets; for ImageNet
it needs ~250 GB of disk (every image stored in a 256 x 256 x 3 slot) and its speed-up depends on
that disk.
"""

import functools
import os
from dataclasses import dataclass, field, replace
from typing import List, Optional

from bnn_transfer.host.artifacts import CHECKPOINT, RUN_MANIFEST
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import read_json, sha256_file
from bnn_transfer.host.progress import log

from .checkpoint import load_checkpoint
from .datasets import open_dataset
from .fit import FitConfig, run
from .models import ModelConfig
from .table2_paper import PRETRAIN_HEADS, ROWS, TARGETS, Row, Target, row_group
from .table2_rows import dataset_of, read_row, source_of

RUNS = "runs"

# Epochs per kind of row. The paper gives none; these are AlexNet-on-ImageNet customs (cosine schedule).
EPOCHS = {"pretrain": 60, "scratch": 100, "finetune": 30}
SYNTHETIC_EPOCHS = {"pretrain": 4, "scratch": 4, "finetune": 3}

# Stand-ins shaped like the paper's Table 1, scaled down: many classes with few images for Birds,
# few classes with more images for Indoor scenes. The transfer sets draw their classes from the half
# of the primitive combinations that pretraining never sees (host/synthetic.py); different class
# counts and seeds make the three stand-ins different tasks.
@dataclass
class Table2Config:
    out: str
    imagenet: Optional[str] = None
    flowers: Optional[str] = None
    birds: Optional[str] = None
    indoor: Optional[str] = None
    imagenet_runs: List[str] = field(default_factory=list)
    preset: Optional[str] = None  # default: paper, tiny with synthetic
    epochs_pretrain: Optional[int] = None
    epochs_scratch: Optional[int] = None
    epochs_finetune: Optional[int] = None
    synthetic: bool = False
    synthetic_scale: float = 1.0  # multiplies the stand-ins' images per class (tests shrink them)
    batch_size: int = 64
    workers: Optional[int] = None  # default: all cores but two (at most 16): decoding JPEGs is the bottleneck
    device: Optional[str] = None
    cache_dir: Optional[str] = None
    seed: int = 0
    amp: bool = True

    @staticmethod
    def from_args(args):
        return Table2Config(
            out=args.out, imagenet=args.imagenet, flowers=args.flowers, birds=args.birds, indoor=args.indoor,
            imagenet_runs=list(args.imagenet_run), preset=args.preset, epochs_pretrain=args.pretrain_epochs,
            epochs_scratch=args.scratch_epochs, epochs_finetune=args.finetune_epochs, synthetic=args.synthetic,
            synthetic_scale=args.synthetic_scale, batch_size=args.batch_size, workers=args.workers,
            device=args.device, cache_dir=args.image_cache, seed=args.seed, amp=not args.no_amp,
        )

    def resolved(self):
        """A copy with every default filled in and the numbers checked."""
        base = SYNTHETIC_EPOCHS if self.synthetic else EPOCHS
        c = replace(
            self,
            out=os.path.abspath(self.out),
            preset=self.preset or ("tiny" if self.synthetic else "paper"),
            epochs_pretrain=self.epochs_pretrain if self.epochs_pretrain is not None else base["pretrain"],
            epochs_scratch=self.epochs_scratch if self.epochs_scratch is not None else base["scratch"],
            epochs_finetune=self.epochs_finetune if self.epochs_finetune is not None else base["finetune"],
            workers=self.workers if self.workers is not None else min(16, max(1, (os.cpu_count() or 1) - 2)),
        )
        for name in ("epochs_pretrain", "epochs_scratch", "epochs_finetune", "batch_size"):
            if getattr(c, name) < 1:
                raise BnnError("--%s must be at least 1, got %d" % (name.replace("_", "-"), getattr(c, name)))
        if not c.synthetic_scale > 0:
            raise BnnError("--synthetic-scale must be positive, got %r" % c.synthetic_scale)
        return c

    def epochs(self, kind):
        return {"pretrain": self.epochs_pretrain, "scratch": self.epochs_scratch,
                "finetune": self.epochs_finetune}[kind]


@dataclass
class Job:
    """One row: the run directory ``fit.out`` trained by ``run(fit, mode)``."""

    id: str
    mode: str
    fit: FitConfig
    title: str
    target: Optional[Target] = None
    row: Optional[Row] = None
    precision: Optional[str] = None  # of pretraining jobs


# --- inputs ----------------------------------------------------------------------------------------

def check_data_dirs(cfg, pretrained_elsewhere):
    """Every dataset directory the table needs exists; checked before hours of pretraining start."""
    keys = [t.key for t in TARGETS]
    if len(pretrained_elsewhere) < len(PRETRAIN_HEADS):
        keys.insert(0, "imagenet")
    if cfg.synthetic:
        given = [k for k in ("imagenet", *[t.key for t in TARGETS]) if getattr(cfg, k)]
        if given:
            raise BnnError("--synthetic generates stand-ins for every dataset; drop --%s" % given[0])
        return
    for key in keys:
        path = getattr(cfg, key)
        what = "the ILSVRC2012 directory" if key == "imagenet" else "the %s directory" % dataset_of(key)
        if not path:
            hint = " (or two --imagenet-run)" if key == "imagenet" else ""
            raise BnnError("--%s DIR is required%s: %s; or pass --synthetic" % (key, hint, what))
        if not os.path.isdir(path):
            state = "not a directory" if os.path.exists(path) else "not found"
            raise BnnError("%s: %s (--%s, %s)" % (path, state, key, what))


def check_layouts(jobs):
    """Open both splits of every dataset a pending row reads, so a bad layout fails now, not mid-way."""
    seen = set()
    for job in jobs:
        f = job.fit
        ident = (f.dataset, f.data_dir, tuple(sorted(f.dataset_options.items())))
        if ident in seen:
            continue
        seen.add(ident)
        for split in ("train", "test"):
            open_dataset(f.dataset, split, f.data_dir, **f.dataset_options)


def load_imagenet_runs(cfg):
    """{precision: run dir} of the --imagenet-run directories, checked against this table's preset."""
    found = {}
    for path in cfg.imagenet_runs:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise BnnError("%s: not a run directory (--imagenet-run expects the directory of a python -m train fit)"
                           % path)
        state = load_checkpoint(path)
        mc = ModelConfig.from_dict(state["model_config"])
        if state.get("mode") != "fit":
            raise BnnError("%s: is a %s run, not a pretraining (python -m train fit) run" % (path, state.get("mode")))
        if mc.preset != cfg.preset:
            raise BnnError("%s: is a %r run, this table uses preset %r (--preset)" % (path, mc.preset, cfg.preset))
        if mc.precision in found:
            raise BnnError("%s: a second %s --imagenet-run (the first is %s)"
                           % (path, mc.precision, found[mc.precision]))
        manifest = os.path.join(path, RUN_MANIFEST)
        if os.path.exists(manifest) and not read_json(manifest, "run manifest").get("finished"):
            raise BnnError("%s: the run has not finished; complete it with python -m train fit --resume" % path)
        found[mc.precision] = path
    return found


# --- plan --------------------------------------------------------------------------------------------

def plan_jobs(cfg, pretrained_elsewhere):
    """The rows in the paper's order: the ImageNet pretrainings first, since fine-tuning needs them."""
    runs_dir = os.path.join(cfg.out, RUNS)
    jobs, pretrained = [], dict(pretrained_elsewhere)

    def fit_config(job_id, key, kind, **kw):
        name, data_dir, opts = source_of(cfg, key)
        return FitConfig(
            out=os.path.join(runs_dir, job_id), preset=cfg.preset, dataset=name, data_dir=data_dir,
            dataset_options=opts, epochs=cfg.epochs(kind), batch_size=cfg.batch_size, seed=cfg.seed,
            workers=cfg.workers, device=cfg.device, amp=cfg.amp, cache_dir=cfg.cache_dir, **kw,
        )

    for precision, head in PRETRAIN_HEADS:
        if precision in pretrained:
            continue
        job_id = "imagenet-%s" % precision
        fc = fit_config(job_id, "imagenet", "pretrain", precision=precision, head=head)
        jobs.append(Job(job_id, "fit", fc, "%s pretraining on %s" % (row_group(precision), fc.dataset),
                        precision=precision))
        pretrained[precision] = fc.out
    for t in TARGETS:
        for r in ROWS:
            job_id = "%s-%s" % (t.key, r.key)
            if r.pretrained is None:
                fc = fit_config(job_id, t.key, "scratch", precision=r.precision, head=r.head)
                mode = "fit"
            else:
                # fit.run takes the backbone's precision from the pretrained run; set it here too so
                # that the parameters compared with a finished run's are the ones run() will record.
                fc = fit_config(job_id, t.key, "finetune", precision=r.pretrained, head=r.head, cut="fc3",
                                init_from=pretrained[r.pretrained])
                mode = "finetune"
            title = "%s %s on %s (%s)" % (r.group, r.label, t.title, fc.dataset)
            jobs.append(Job(job_id, mode, fc, title, target=t, row=r))
    return jobs


# --- row state --------------------------------------------------------------------------------------

def _diff(have, want):
    keys = sorted(set(have or {}) | set(want))
    parts = ["%s %r -> %r" % (k, (have or {}).get(k), want.get(k)) for k in keys if (have or {}).get(k) != want.get(k)]
    return ", ".join(parts) or "mode"


def row_state(job):
    """"done", "resume" or "new"; BnnError when the directory holds a run with other parameters."""
    rec = read_row(job)
    if rec is None:
        return "new"
    params, mode, finished, _, _ = rec
    want = job.fit.identity()
    if mode != job.mode or params != want:
        raise BnnError("%s: holds a %s run with other parameters (%s); delete the directory to redo this row"
                       % (job.fit.out, mode, _diff(params, want)))
    if finished:
        return "done"
    return "resume" if os.path.exists(os.path.join(job.fit.out, CHECKPOINT)) else "new"


def check_pretrained_unchanged(job, digest):
    """A fine-tuned row's pretrained checkpoint is the one it was made from (its path alone can't tell)."""
    if job.mode != "finetune":
        return
    rec = read_row(job)
    if rec is None or rec[4] is None:
        return
    recorded = rec[4].get("inputs", {}).get("pretrained", {}).get("sha256")
    src = os.path.join(job.fit.init_from, CHECKPOINT)
    if recorded and recorded != digest(src):
        raise BnnError("%s: was fine-tuned from an earlier %s; delete the directory to redo this row"
                       % (job.fit.out, src))


# --- the command ------------------------------------------------------------------------------------

def run_table2(cfg, on_epoch_end=None, progress=True):
    """Run every pending row, writing the report after each; returns the report (table2.json's content).

    ``on_epoch_end(row_id, epoch, metrics)`` is passed to each row's ``fit.run`` (tests interrupt with it).
    """
    cfg = cfg.resolved()
    elsewhere = load_imagenet_runs(cfg)
    check_data_dirs(cfg, elsewhere)
    jobs = plan_jobs(cfg, elsewhere)
    states = {job.id: row_state(job) for job in jobs}
    pending = [job for job in jobs if states[job.id] != "done"]
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "resume", "new")}
    log("table2: %d rows under %s: %d done, %d to resume, %d to run"
          % (len(jobs), os.path.join(cfg.out, RUNS), counts["done"], counts["resume"], counts["new"]))
    check_layouts(pending)
    from .table2_report import REPORT_JSON, REPORT_MD, REPORT_PNG, table_lines, write_report

    write_report(cfg, jobs, elsewhere, plot=False)
    digest = functools.lru_cache(maxsize=None)(sha256_file)
    for i, job in enumerate(jobs, 1):
        state = states[job.id]
        check_pretrained_unchanged(job, digest)
        verb = {"done": "checking", "resume": "resuming", "new": "running"}[state]
        log("table2: [%d/%d] %s %s: %s, %d epoch%s"
              % (i, len(jobs), verb, job.id, job.title, job.fit.epochs, "" if job.fit.epochs == 1 else "s"))
        job.fit.resume = state == "resume"
        hook = None if on_epoch_end is None else functools.partial(on_epoch_end, job.id)
        try:
            run(job.fit, job.mode, on_epoch_end=hook, progress=progress)
        finally:
            # Also when the row is interrupted, so the report shows how far it got.
            if state != "done":
                write_report(cfg, jobs, elsewhere, plot=False)
    report = write_report(cfg, jobs, elsewhere, plot=True)
    print("\n".join(["", *table_lines(report["rows"]), ""]))
    log("table2: wrote %s, %s and %s" % tuple(os.path.join(cfg.out, n) for n in (REPORT_MD, REPORT_JSON, REPORT_PNG)))
    return report


def main(args):
    """``python -m train table2`` (arguments parsed by train/__main__.py)."""
    run_table2(Table2Config.from_args(args))
    return 0
