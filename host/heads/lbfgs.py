"""Full-batch L-BFGS for the float head, and the L2 path that picks its regularisation.

Softmax regression with L2 is smooth and strongly convex: a quasi-Newton method on the whole
training set reaches its optimum in tens of passes, where minibatch Adam needs a step size, a
schedule and early stopping to get near it (and stops short at any L2 it was not tuned for). Each
pass unpacks ``block`` rows of packed bits at a time, so memory stays at one block of floats plus
``memory`` pairs of parameter vectors (2 x 8 x 3.3 MB in float64 for a 4,096 x 102 float head).

The features are used as raw +-1 here, not scaled by 1/sqrt(D) as in minibatch training: the
bias and the weights then have comparable curvature, and the first step along the gradient (the
class-centroid classifier) is not swamped by the bias' share of it.

The L2 path (``l2_path``) walks a grid from the strongest L2 to the weakest in one L-BFGS run: a
change of L2 shifts the loss, the gradient and the curvature pairs by exactly known amounts (the
penalty is quadratic), so neither the warm start nor the curvature memory is lost. Each L2 gets
a few iterations, is scored on the held-out rows, and the walk stops once ``patience`` weaker
values in a row fail to improve on the best.
"""

import time

import numpy as np

from ..features import unpack_features
from ..progress import progress_bar
from .model import loss_and_grad


class Lbfgs:
    """L-BFGS (Nocedal & Wright, Algorithm 7.4) on ``data(x) + l2/2 * ||x * mask||^2``.

    ``data(x) -> (loss, grad)`` is the data term; ``mask`` is 1 on penalised entries (weights)
    and 0 elsewhere (biases). ``set_l2`` moves to another L2 without a data pass.
    """

    def __init__(self, data, x, l2, mask, memory=8):
        self.data, self.mask, self.l2, self.memory = data, mask, float(l2), memory
        self.x = np.array(x, dtype=np.float32)
        self.f, self.g = self._fg(self.x)
        self.pairs = []
        self.evals = 1

    def _fg(self, x):
        f, g = self.data(x)
        if self.l2:
            xm = x * self.mask
            f += 0.5 * self.l2 * float(np.dot(xm, xm))
            g += np.float32(self.l2) * xm
        return f, g

    def set_l2(self, l2):
        delta = float(l2) - self.l2
        xm = self.x * self.mask
        self.f += 0.5 * delta * float(np.dot(xm, xm))
        self.g += np.float32(delta) * xm
        for s, y in self.pairs:
            y += delta * (s * self.mask)
        # a weaker L2 flattens the curvature: a pair may no longer describe a convex direction
        self.pairs = [(s, y) for s, y in self.pairs if float(np.dot(s, y)) > 1e-10 * float(np.dot(y, y))]
        self.l2 = float(l2)

    def _direction(self):
        q = self.g.astype(np.float64)
        alphas = []
        for s, y in reversed(self.pairs):
            rho = 1.0 / float(np.dot(y, s))
            a = rho * float(np.dot(s, q))
            q -= a * y
            alphas.append((rho, a))
        if self.pairs:
            s, y = self.pairs[-1]
            q *= float(np.dot(s, y)) / float(np.dot(y, y))
        else:
            # Newton's step for the penalty alone where it dominates (strong L2: nearly exact),
            # unit length otherwise; the line search scales it either way
            q /= max(1e-12, self.l2, float(np.linalg.norm(q)))
        for (s, y), (rho, a) in zip(self.pairs, reversed(alphas)):
            q += (a - rho * float(np.dot(y, q))) * s
        d = (-q).astype(np.float32)
        if not float(np.dot(self.g, d)) < 0:  # float32 rounding spoilt the direction: restart
            self.pairs = []
            d = -self.g / np.float32(max(1e-12, float(np.linalg.norm(self.g))))
        return d

    def run(self, max_iter, ftol=1e-4):
        """Up to ``max_iter`` iterations; stops early when one decreases the objective by less than
        ``ftol`` of it, or when the line search finds no decrease. Returns the iterations done."""
        for it in range(1, max_iter + 1):
            step = self._line_search(self._direction())
            if step is None:
                return it - 1
            x, f, g = step
            s, y = (x - self.x).astype(np.float64), (g - self.g).astype(np.float64)
            if float(np.dot(s, y)) > 1e-10 * float(np.dot(y, y)):
                self.pairs.append((s, y))
                del self.pairs[:-self.memory]
            done = self.f - f < ftol * abs(self.f)
            self.x, self.f, self.g = x, f, g
            if done:
                return it
        return max_iter

    def _line_search(self, d, c1=1e-4, c2=0.9, max_evals=12):
        """A step along ``d`` with sufficient decrease and a flattened slope (weak Wolfe).

        Extrapolates (secant on the slope, x2 to x10 per try) while the slope stays steep, which
        the first, unit-length step always does; bisects between the longest acceptable and the
        shortest too-long step otherwise. Returns (x, f, grad), or None without any decrease.
        """
        slope = float(np.dot(self.g, d))
        lo, hi, t, best = 0.0, None, 1.0, None
        for _ in range(max_evals):
            x = self.x + np.float32(t) * d
            f, g = self._fg(x)
            self.evals += 1
            slope_t = float(np.dot(g, d))
            if not f <= self.f + c1 * t * slope:
                hi = t
            else:
                best = (x, f, g)
                if slope_t >= c2 * slope:
                    return best
                lo = t
                if hi is None:
                    t *= min(10.0, max(2.0, slope / (slope - slope_t))) if slope_t < 0 else 2.0
                    continue
            t = 0.5 * (lo + hi)
        return best


def data_term(model, packed, width, y, rows, block):
    """``data(theta)`` for ``Lbfgs``: mean cross-entropy over ``rows`` of raw +-1 features, and its gradient."""
    n = rows.size

    def data(theta):
        np.copyto(model.theta, theta)
        loss, grad = 0.0, np.zeros_like(theta)
        for start in range(0, n, block):
            idx = rows[start:start + block]
            x = unpack_features(packed, width, idx)
            z, cache = model.forward(x)
            part, g = loss_and_grad(z, y[idx], n)
            loss += part
            grad += model.flat(model.grads(x, g, cache, 0.0))
        return loss, grad

    return data


def decay_mask(model):
    return model.flat({k: np.full(a.shape, k in model.decay, np.float32) for k, a in model.p.items()})


def l2_path(opt, grid, unit, max_iter, patience, score, history, progress):
    """Walk ``grid`` (strongest L2 first) with ``opt``; returns (best l2, its parameters).

    ``opt`` penalises ``l2 * unit`` for each ``l2`` of the grid (a change of feature scale).
    ``score(theta) -> (val_loss, val_top1)`` rates a solution on the held-out rows; the best has
    the highest accuracy, ties broken by a lower loss (frequent on small held-out sets).
    """
    best, stale = None, 0
    grid = sorted(grid, reverse=True)
    bar = progress_bar(len(grid), "fit (L2 path)", progress)
    for l2 in grid:
        t0, evals = time.perf_counter(), opt.evals
        opt.set_l2(l2 * unit)
        iters = opt.run(max_iter)
        val_loss, val_top1 = score(opt.x)
        history.append({"phase": "l2-path", "l2": l2, "iterations": iters, "passes": opt.evals - evals,
                        "train_loss": opt.f, "val_loss": val_loss, "val_top1": val_top1,
                        "seconds": time.perf_counter() - t0})
        if hasattr(bar, "update"):
            bar.update(1)
            bar.set_postfix({"l2": "%.0e" % l2, "val_top1": round(val_top1, 4)}, refresh=False)
        if best is None or val_top1 > best[0] or (val_top1 == best[0] and val_loss < best[1]):
            best, stale = (val_top1, val_loss, l2, opt.x.copy()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if hasattr(bar, "close"):
        bar.close()
    return best[2], best[3]
