"""Minibatch Adam with early stopping: the binary head's trainer (and any head's, on request).

The binary head's loss is not differentiable in its weights (their signs): it trains its latent
weights with the straight-through estimator, which only a stochastic first-order method makes
sense of, and stops early on the held-out accuracy.
"""

import math
import time

import numpy as np

from ..features import unpack_features
from ..progress import progress_bar
from .model import loss_and_grad


class Adam:
    """Adam (Kingma & Ba) over a dict of float32 arrays, updated in place.

    One scratch array per parameter: a step allocates nothing, which keeps the board's small
    RAM steady and saves time on the 400k-weight float head.
    """

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, np.float32(eps)
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        step = np.float32(self.lr * math.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t))
        for k, g in grads.items():
            m, v, tmp = self.m[k], self.v[k], self.tmp[k]
            np.subtract(g, m, out=tmp)  # m += (1 - beta1) * (g - m)
            tmp *= np.float32(1 - self.beta1)
            m += tmp
            np.multiply(g, g, out=tmp)  # v += (1 - beta2) * (g * g - v)
            tmp -= v
            tmp *= np.float32(1 - self.beta2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step
            params[k] -= tmp


def train_epochs(model, packed, width, y, rows, val_rows, cfg, wd, batch_size, scale, rng, score, history, desc,
                 progress, epochs=None):
    """Up to ``epochs`` (default ``cfg.epochs``) epochs of Adam on ``rows``; returns the best epoch.

    With held-out ``val_rows`` the model ends with the parameters of its best epoch (accuracy
    first, a loss lower by 0.01 breaking ties), after ``cfg.patience`` epochs without one.
    """
    epochs = cfg.epochs if epochs is None else epochs
    opt = Adam(model.p, cfg.lr)
    best_score, best_theta, best_epoch, stale = None, None, epochs, 0
    bar = progress_bar(epochs, desc, progress, iterable=range(1, epochs + 1))
    for epoch in bar:
        t0 = time.perf_counter()
        order = rng.permutation(rows)
        total = 0.0
        for start in range(0, order.size, batch_size):
            # sorted rows make the gather from the packed matrix sequential
            idx = np.sort(order[start:start + batch_size])
            x = unpack_features(packed, width, idx, scale=scale)
            z, cache = model.forward(x)
            loss, g = loss_and_grad(z, y[idx])
            total += loss * idx.size
            opt.step(model.p, model.grads(x, g, cache, wd))
            model.after_step()
        rec = {"phase": desc, "epoch": epoch, "train_loss": total / max(1, order.size)}
        if val_rows.size:
            rec["val_loss"], rec["val_top1"] = score(model)
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        if hasattr(bar, "set_postfix"):
            # refresh=False: tqdm syncs its counter only when it redraws on its own
            bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k in ("train_loss", "val_top1")},
                            refresh=False)
        if not val_rows.size:
            continue
        # Accuracy first: the loss keeps falling long after accuracy has peaked (the head only
        # grows more confident), so stopping on the loss alone overfits. A clearly lower loss
        # breaks ties, frequent on small validation sets; the margin lets a run that is already
        # perfect on them stop.
        acc, loss = rec["val_top1"], rec["val_loss"]
        if best_score is None or acc > best_score[0] or (acc == best_score[0] and loss < best_score[1] - 1e-2):
            best_score, stale, best_epoch = (acc, loss), 0, epoch
            best_theta = model.theta.copy()
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_theta is not None:
        np.copyto(model.theta, best_theta)
    return best_epoch
