"""Device, distributed and mixed-precision plumbing, and the epoch loops.

One process per device. Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel, each rank sees its shard of the data, and only rank 0 writes files.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bnn_transfer.host.errors import BnnError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world > 1

    @property
    def cuda(self):
        return self.device.type == "cuda"


def setup_runtime(device=None) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BnnError("--device %r: not a torch device (cpu, cuda, cuda:1, ...)" % (device,)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BnnError("--device %r: CUDA is not available on this machine (use cpu)" % (device,))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local_rank)


def shutdown_runtime(rt: Runtime):
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def autocast(rt: Runtime, enabled: bool):
    if enabled and rt.cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def all_reduce_sum(rt: Runtime, values):
    """Sum a list of numbers over all ranks (identity on one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(t)
    return t.tolist()


def topk_correct(logits, labels, ks=(1, 5)):
    k = min(max(ks), logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hit = pred.eq(labels.view(-1, 1))
    return [hit[:, : min(kk, k)].any(dim=1).sum().item() for kk in ks]


def run_epoch(rt, forward, loader, optimizer=None, scheduler=None, after_step=None, amp=False, scaler=None,
              progress=None):
    """One pass over ``loader``. Trains when ``optimizer`` is given, else evaluates without grad.

    ``forward(x_float) -> logits``; batches are (uint8 NCHW, labels, skipped-count).
    Returns summed-over-ranks {loss, top1, top5, n, skipped}.
    """
    train = optimizer is not None
    loss_sum = top1 = top5 = n = skipped = 0.0
    grad = contextlib.nullcontext() if train else torch.no_grad()
    with grad:
        for x, y, dropped in loader:
            skipped += int(dropped)
            if x.shape[0] == 0:
                continue
            x = x.to(rt.device, non_blocking=True).float()
            y = y.to(rt.device, non_blocking=True)
            with autocast(rt, amp):
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step()
            c1, c5 = topk_correct(logits.detach(), y)
            bs = y.shape[0]
            loss_sum += loss.item() * bs
            top1 += c1
            top5 += c5
            n += bs
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss="%.3f" % (loss_sum / max(n, 1)), acc="%.3f" % (top1 / max(n, 1)),
                                     refresh=False)  # shown at the next update, which mininterval paces
    loss_sum, top1, top5, n, skipped = all_reduce_sum(rt, [loss_sum, top1, top5, n, skipped])
    return {
        "loss": loss_sum / max(n, 1),
        "top1": top1 / max(n, 1),
        "top5": top5 / max(n, 1),
        "n": int(n),
        "skipped": int(skipped),
    }


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
