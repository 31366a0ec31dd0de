"""Training from scratch (``fit``), fine-tuning after a frozen cut (``finetune``) and evaluation.

Both modes share one loop. Fine-tuning freezes every block before the cut point: a binary
backbone is folded to its integer definition (train/freeze.py) and evaluated through it, so the
head is trained on exactly the bits the accelerator will produce; a float backbone is simply
frozen in eval mode.
"""

import contextlib
import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import numpy as np
import torch
from torch import nn

from bnn_transfer.host.artifacts import CHECKPOINT, RUN_MANIFEST
from bnn_transfer.host.atomic import output_lock, write_bytes_atomic
from bnn_transfer.host.datasets import check_training_classes
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.heads.fit import stratified_split
from bnn_transfer.host.manifest import finalize_manifest, new_manifest, package_versions, read_json, sha256_file
from bnn_transfer.host.preprocess import Preprocess
from bnn_transfer.host.progress import log, progress_bar

from . import engine
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .data import make_loader
from .datasets import open_dataset
from .freeze import IntegerBackbone, fold_backbone
from .models import ModelConfig, build_model
from .plots import plot_curves, read_metrics

METRICS = "metrics.jsonl"
CURVES = "curves.png"
CHECKPOINT_SECONDS = 30.0


@dataclass
class FitConfig:
    out: str = field(metadata={"runtime": True})  # runtime: where or how fast it runs, not what it computes
    preset: str = "tiny"
    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    dataset_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: Optional[float] = None  # default: 5e-3 for Adam (binary), 0.05 for SGD (fp)
    weight_decay: Optional[float] = None  # default: 0 for binary, 5e-4 for fp
    precision: str = "binary"
    head: str = "binary"
    cut: str = "fc3"
    seed: int = 0
    workers: int = field(default=2, metadata={"runtime": True})
    device: Optional[str] = field(default=None, metadata={"runtime": True})
    amp: bool = True
    cache_dir: Optional[str] = field(default=None, metadata={"runtime": True})
    flip: bool = True  # random left-right mirroring of training images
    # > 0: this fraction of each class's training images is held out and scored after every epoch
    # (the test split only after the last): the epoch with the best held-out top-1 is reported as
    # best_epoch, the budget to retrain with on every image (python -m demo does)
    val_fraction: float = 0.0
    init_from: Optional[str] = None  # fine-tuning: the pretrained run directory
    resume: bool = field(default=False, metadata={"runtime": True})

    def optimizer_name(self):
        return "adam" if self.precision == "binary" else "sgd"

    def resolved_lr(self):
        return self.lr if self.lr is not None else (5e-3 if self.precision == "binary" else 0.05)

    def resolved_weight_decay(self):
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.precision == "binary" else 5e-4

    def identity(self):
        """The parameters that define the result (not where or how fast it runs)."""
        d = asdict(self)
        return {f.name: d[f.name] for f in fields(self) if not f.metadata.get("runtime")}


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(params, cfg: FitConfig):
    if cfg.optimizer_name() == "adam":
        # Adam for binary networks, as in Courbariaux et al. and the paper.
        return torch.optim.Adam(params, lr=cfg.resolved_lr(), weight_decay=cfg.resolved_weight_decay())
    return torch.optim.SGD(
        params, lr=cfg.resolved_lr(), momentum=0.9, nesterov=True, weight_decay=cfg.resolved_weight_decay()
    )


class Frozen(nn.Module):
    """The frozen part before the cut: integer-defined for binary nets, eval-mode float otherwise."""

    def __init__(self, model, cut):
        super().__init__()
        names = list(model.blocks)
        self.cut = cut
        if model.cfg.precision == "binary":
            self.body = IntegerBackbone(fold_backbone(model, cut))
        else:
            self.body = None
            self.blocks = nn.ModuleList(model.blocks[n] for n in names[: names.index(cut)])

    @torch.no_grad()
    def forward(self, x):
        if self.body is not None:
            return self.body(x)
        for b in self.blocks:
            b.eval()
            if isinstance(b[0], nn.Linear) and x.dim() > 2:
                x = torch.flatten(x, 1)
            x = b(x)
        return torch.flatten(x, 1)


def build_for_run(state, path):
    """(model, frozen-or-None) as a checkpoint describes them."""
    cfg = ModelConfig.from_dict(state["model_config"])
    model = build_model(cfg)
    load_model_state(model, state, path)
    model.eval()
    frozen = Frozen(model, cfg.cut) if state.get("mode") == "finetune" else None
    return model, frozen


def forward_fn(model, frozen, cut):
    if frozen is None:
        return model
    return lambda x: model(frozen(x), start=cut)


def _trim_metrics(path, epochs_done):
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        keep = [r for r in rows if r["epoch"] <= epochs_done]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise BnnError("%s: not a metrics file of this flow (a JSON object with an 'epoch' per line)"
                       % path) from None
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def _append_metrics(path, row):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def is_up_to_date(out, cfg: FitConfig, mode):
    path = os.path.join(out, RUN_MANIFEST)
    if not os.path.exists(path):
        return False
    m = read_json(path)
    if not isinstance(m, dict):
        return False
    if not (m.get("finished") and m.get("params") == cfg.identity() and m.get("mode") == mode):
        return False
    if cfg.init_from:
        # Same pretrained path is not enough: the pretrained run may have been retrained since.
        src = os.path.join(cfg.init_from, CHECKPOINT)
        return m.get("inputs", {}).get("pretrained", {}).get("sha256") == sha256_file(src)
    return True


def check_resumable(state, cfg: FitConfig, path):
    """A resumed run must keep every parameter but the number of epochs."""
    saved = dict(state.get("fit_config", {}))
    now = cfg.identity()
    changed = sorted(k for k in now if k != "epochs" and k in saved and saved[k] != now[k])
    if changed:
        raise BnnError("%s: cannot resume with other parameters (%s); use a new --out" % (
            path, ", ".join("%s %r -> %r" % (k, saved[k], now[k]) for k in changed)))


def check_config(cfg: FitConfig):
    bad = [(flag, v, want) for flag, v, want, ok in (
        ("--epochs", cfg.epochs, ">= 1", cfg.epochs >= 1),
        ("--batch-size", cfg.batch_size, ">= 1", cfg.batch_size >= 1),
        ("--workers", cfg.workers, ">= 0", cfg.workers >= 0),
        ("--lr", cfg.lr, "> 0 and finite", cfg.lr is None or 0 < cfg.lr < float("inf")),
        ("--weight-decay", cfg.weight_decay, ">= 0", cfg.weight_decay is None or cfg.weight_decay >= 0),
        ("--val-fraction", cfg.val_fraction, "in [0, 1)", 0 <= cfg.val_fraction < 1),
    ) if not ok]
    if bad:
        flag, v, want = bad[0]
        raise BnnError("%s %r: must be %s" % (flag, v, want))


def check_run_dir(out):
    """Refuse an --out that exists and is not a training run: training writes into it in place."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise BnnError("%s: exists and is not a directory; --out takes a run directory" % out)
    if os.listdir(out) and not os.path.exists(os.path.join(out, CHECKPOINT)):
        raise BnnError("%s: exists, is not empty and is not a training run (no %s in it); choose another --out"
                       % (out, CHECKPOINT))


def run(cfg: FitConfig, mode="fit", on_epoch_end=None, progress=True):
    """Train (mode "fit") or fine-tune (mode "finetune"); returns the final metrics row.

    ``on_epoch_end(epoch, row)`` is called after each checkpoint (tests use it to interrupt).
    The run directory is locked meanwhile: a second command writing it is refused.
    """
    check_config(cfg)
    writer = int(os.environ.get("RANK", "0")) == 0  # distributed: only rank 0 writes the run dir
    with output_lock(cfg.out) if writer else contextlib.nullcontext():
        return _run(cfg, mode, on_epoch_end, progress)


def _run(cfg: FitConfig, mode, on_epoch_end, progress):
    out = os.path.abspath(cfg.out)
    check_run_dir(out)
    ckpt_path = os.path.join(out, CHECKPOINT)
    cfg, pretrained = _pretrained(cfg, mode)
    if cfg.precision == "fp" and cfg.head == "binary":
        raise BnnError("--head-type binary needs a binary network: floating-point networks have a float last layer")
    if is_up_to_date(out, cfg, mode):  # also under --resume: a finished run has nothing to continue
        m = read_json(os.path.join(out, RUN_MANIFEST))
        log("train: %s is up to date (%s finished), skipping" % (out, mode))
        return m["final"]
    if not cfg.resume and os.path.exists(ckpt_path):
        raise BnnError("%s: a run already exists here; pass --resume to continue it or choose another --out" % out)

    rt = engine.setup_runtime(cfg.device)
    # Where torch has a deterministic and a faster kernel, the deterministic one: a run repeats bit for bit
    torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)
    train_ds = open_dataset(cfg.dataset, "train", cfg.data_dir, **cfg.dataset_options)
    check_training_classes(train_ds)
    test_ds = open_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.dataset_options)
    precision = cfg.precision
    mcfg = ModelConfig(cfg.preset, len(train_ds.classes), precision, cfg.head, cfg.cut)
    model = build_model(mcfg)
    pp = Preprocess.for_input_size(mcfg.spec().input_size)

    state = _restore(model, cfg, mode, ckpt_path, pretrained)
    start_epoch = int(state["epoch"]) if state is not None else 0

    model.to(rt.device)
    frozen = None
    if mode == "finetune":
        for name in model.frozen_names():
            model.blocks[name].requires_grad_(False)
        frozen = Frozen(model, cfg.cut).to(rt.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    net = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.cuda else None)
    train_loader, val_loader, test_loader = _loaders(cfg, train_ds, test_ds, pp, rt.distributed)
    steps = cfg.epochs * len(train_loader)
    optimizer = make_optimizer(trainable, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    scaler = torch.amp.GradScaler("cuda") if (rt.cuda and cfg.amp and not torch.cuda.is_bf16_supported()) else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    after_step = engine.unwrap(net).clip_weights if precision == "binary" else None
    forward = forward_fn(net, frozen, cfg.cut)
    if rt.main:
        os.makedirs(out, exist_ok=True)
        _trim_metrics(os.path.join(out, METRICS), start_epoch)

    row = None
    saved_at = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        # Every source of randomness is a function of (seed, epoch): a resumed run repeats it exactly.
        seed_everything(cfg.seed * 1000003 + epoch)
        for loader in (train_loader, test_loader):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
        t0 = time.time()
        net.train()
        if mode == "finetune":
            for name in model.frozen_names():
                model.blocks[name].eval()
        bar = progress_bar(len(train_loader), "epoch %d/%d" % (epoch + 1, cfg.epochs), progress and rt.main)
        tr = engine.run_epoch(rt, forward, train_loader, optimizer, scheduler, after_step, cfg.amp, scaler, bar)
        if bar is not None:
            bar.close()
        net.eval()
        last = epoch + 1 == cfg.epochs
        row = _scored_row(rt, forward, cfg, epoch, tr, val_loader, test_loader, last)
        row.update(lr=scheduler.get_last_lr()[0], seconds=round(time.time() - t0, 2))
        if rt.main:
            if row["skipped_images"]:
                log("train: skipped %d unreadable images this epoch" % row["skipped_images"])
            metrics = os.path.join(out, METRICS)
            if last and val_loader is not None:
                row.update(best_epoch((read_metrics(metrics) if os.path.exists(metrics) else []) + [row]))
            # An epoch of a small task takes a fraction of a second, a checkpoint with Adam's state far
            # longer: save the first epoch (the run directory then refuses other parameters), the last,
            # and otherwise every CHECKPOINT_SECONDS. A resumed run repeats the epochs since the last one
            # exactly, and the metrics of those epochs are trimmed first.
            due = epoch == start_epoch or last or time.time() - saved_at >= CHECKPOINT_SECONDS
            if due:
                save_checkpoint(ckpt_path, {
                    "mode": mode, "model_config": mcfg.to_dict(), "fit_config": asdict(cfg),
                    "classes": list(train_ds.classes), "preprocess": pp.to_dict(), "epoch": epoch + 1,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
                    "metrics": row,
                })
            _append_metrics(metrics, row)  # after the checkpoint: a failed save leaves no row of its epoch
            if due:
                _write_run_manifest(out, cfg, mode, mcfg, train_ds, test_ds, pp, row, last)
                saved_at = time.time()
            scores = " ".join("%s top-1 %.1f%% top-5 %.1f%%" % (s, 100 * row[s + "_top1"], 100 * row[s + "_top5"])
                              for s in ("val", "test") if s + "_top1" in row)
            log("train: epoch %d/%d loss %.3f train %.1f%% %s (%.0f s)" % (
                epoch + 1, cfg.epochs, row["train_loss"], 100 * row["train_top1"], scores, row["seconds"]))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    if row is None:  # resumed a run whose last epoch was saved but not yet recorded as finished
        row = state["metrics"]
        if rt.main:
            _write_run_manifest(out, cfg, mode, mcfg, train_ds, test_ds, pp, row, True)
    # DDP's Reducer holds the process group: freed after the group is destroyed, it joins Gloo's worker
    # threads while holding the GIL they may need, and the rank hangs on exit (pytorch#56297).
    del net, forward
    gc.collect()
    engine.shutdown_runtime(rt)
    return row


def _pretrained(cfg: FitConfig, mode):
    """(the config to run, the pretrained checkpoint or None): fine-tuning takes the pretrained network's
    preset (checked) and precision, in a copy of ``cfg``."""
    if mode != "finetune":
        return cfg, None
    if not cfg.init_from:
        raise BnnError("finetune needs --run RUN_DIR (a pretrained run)")
    pretrained = load_checkpoint(cfg.init_from)
    pcfg = ModelConfig.from_dict(pretrained["model_config"])
    if pcfg.preset != cfg.preset:
        raise BnnError("%s: pretrained run is of preset %r, not %r" % (cfg.init_from, pcfg.preset, cfg.preset))
    return replace(cfg, precision=pcfg.precision), pretrained


def _restore(model, cfg: FitConfig, mode, ckpt_path, pretrained):
    """The checkpoint a resumed run continues from (its weights loaded into ``model``), else None; a new
    fine-tuning run takes everything but the classifier from the pretrained network."""
    if cfg.resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, expect_preset=cfg.preset)
        if state.get("mode") != mode:
            raise BnnError("%s: is a %s run, cannot resume it as %s" % (ckpt_path, state.get("mode"), mode))
        check_resumable(state, cfg, ckpt_path)
        load_model_state(model, state, ckpt_path)
        return state
    if pretrained is not None:
        own = model.state_dict()
        own.update({k: v for k, v in pretrained["model"].items() if not k.startswith("blocks.fc3.") and k in own})
        model.load_state_dict(own)
    return None


def _loaders(cfg: FitConfig, train_ds, test_ds, pp, distributed):
    """(train, held-out or None, test) loaders: ``val_fraction`` of each class's training images is held out."""
    train_idx, val_idx = stratified_split(train_ds.labels, cfg.val_fraction, np.random.default_rng([cfg.seed, 7]))
    train = make_loader(train_ds, pp, True, cfg.batch_size, cfg.workers, cfg.seed, cfg.cache_dir, distributed,
                        cfg.flip, subset=train_idx)
    test = make_loader(test_ds, pp, False, cfg.batch_size, cfg.workers, cfg.seed, cfg.cache_dir, distributed)
    # Selection data: the held-out training images when there are any, never the test split
    val = make_loader(train_ds, pp, False, cfg.batch_size, cfg.workers, cfg.seed, cfg.cache_dir, distributed,
                      subset=val_idx) if len(val_idx) else None
    return train, val, test


def _scored_row(rt, forward, cfg: FitConfig, epoch, tr, val_loader, test_loader, last):
    """The metrics row of an epoch: its training figures, the held-out split's every epoch, the test split's
    only after the last one when there is a held-out split (every epoch otherwise)."""
    row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_top1": tr["top1"]}
    skipped = tr["skipped"]
    for split, loader in (("val", val_loader), ("test", test_loader)):
        if loader is None or (split == "test" and val_loader is not None and not last):
            continue
        ev = engine.run_epoch(rt, forward, loader, amp=cfg.amp)
        row.update({split + "_loss": ev["loss"], split + "_top1": ev["top1"], split + "_top5": ev["top5"]})
        skipped += ev["skipped"]
    row["skipped_images"] = skipped
    return row


def best_epoch(rows, window=5):
    """The epoch budget the held-out images choose: the best held-out top-1 averaged over ``window`` epochs.

    A few dozen held-out images score in steps of several points, so one epoch's score is mostly
    noise: the mean over neighbouring epochs is the signal. Ties go to the later epoch (longer
    training is the safer side for a baseline).
    """
    top1 = [r["val_top1"] for r in rows]
    half = window // 2
    smooth = [sum(top1[max(0, k - half):k + half + 1]) / len(top1[max(0, k - half):k + half + 1])
              for k in range(len(top1))]
    k = max(range(len(rows)), key=lambda j: (round(smooth[j], 9), j))
    return {"best_epoch": rows[k]["epoch"], "best_val_top1": round(smooth[k], 4)}


def _write_run_manifest(out, cfg, mode, mcfg, train_ds, test_ds, pp, row, finished):
    plot_curves(read_metrics(os.path.join(out, METRICS)), os.path.join(out, CURVES),
                "%s %s %s on %s" % (mode, mcfg.preset, mcfg.precision, cfg.dataset))
    inputs = {"train": train_ds.describe(), "test": test_ds.describe()}
    if cfg.init_from:
        src = os.path.join(cfg.init_from, CHECKPOINT)
        inputs["pretrained"] = {"path": os.path.abspath(src), "sha256": sha256_file(src)}
    m = new_manifest(
        "train", "run", params=cfg.identity(), inputs=inputs, mode=mode, model_config=mcfg.to_dict(),
        preset=mcfg.spec().to_dict(), preprocess=pp.to_dict(), classes=list(train_ds.classes),
        epochs_done=row["epoch"], finished=bool(finished), final=row,
        versions=package_versions("torch", "brevitas"),
    )
    finalize_manifest(out, m, RUN_MANIFEST, files=[CHECKPOINT, METRICS, CURVES])


def evaluate_run(run_dir, dataset, data_dir=None, dataset_options=None, batch_size=128, workers=2, device=None):
    """top-1/top-5 of a run on a dataset's test split, through the integer backbone when fine-tuned."""
    state = load_checkpoint(run_dir)
    model, frozen = build_for_run(state, run_dir)
    ds = open_dataset(dataset, "test", data_dir, **(dataset_options or {}))
    if list(ds.classes) != list(state["classes"]):
        raise BnnError(
            "%s: run was trained on %d classes that differ from %s's %d classes"
            % (run_dir, len(state["classes"]), dataset, len(ds.classes))
        )
    rt = engine.setup_runtime(device)
    model.to(rt.device)
    if frozen is not None:
        frozen.to(rt.device)
    pp = Preprocess.from_dict(state["preprocess"])
    loader = make_loader(ds, pp, False, batch_size, workers, 0, None, False)
    cut = ModelConfig.from_dict(state["model_config"]).cut
    res = engine.run_epoch(rt, forward_fn(model, frozen, cut), loader)
    return {"top1": res["top1"], "top5": res["top5"], "images": res["n"], "skipped": res["skipped"]}
