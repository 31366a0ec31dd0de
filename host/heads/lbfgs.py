"""Full-batch L-BFGS for the float head, and the L2 path that picks its regularisation.

Softmax regression with L2 is smooth and strongly convex: a quasi-Newton method on the whole
training set reaches its optimum in tens of passes, where minibatch Adam needs a step size, a
schedule and early stopping to get near it (and stops short at any L2 it was not tuned for). Each
pass unpacks ``block`` rows of packed bits at a time, so memory stays at one block of floats plus
``memory`` pairs of parameter vectors (2 x 8 x 1.7 MB in float32 for a 4,096 x 102 float head).

The features are used as raw +-1 here, not scaled by 1/sqrt(D) as in minibatch training: the
bias and the weights then have comparable curvature, and the first step along the gradient (the
class-centroid classifier) is not swamped by the bias' share of it.

The L2 path (``l2_path``) walks a grid from the strongest L2 to the weakest in one L-BFGS run: a
change of L2 shifts the loss, the gradient and the curvature pairs by exactly known amounts (the
penalty is quadratic), so neither the warm start nor the curvature memory is lost. Each L2 is
solved inexactly, as in inexact continuation methods: iterations until its gradient norm has
fallen to ``gtol`` of what it was when the L2 was set, at most ``max_iter`` of them. A fixed count
would either waste passes where one step solves the new L2 (strong L2, where the penalty's
Newton step is nearly exact; on the bench's Flowers-size features every L2 but the weakest) or
stop short where the data are ill-conditioned (the wide layers of a real backbone, where a
gradient may grow before it shrinks, and an unsolved L2 scores at random on the held-out rows).
Each L2 is then scored on the held-out rows, and the walk stops once ``patience`` weaker values in
a row fail to improve on the best.
"""

import math
import time

import numpy as np

from ..features import unpack_features
from ..progress import progress_bar
from .model import loss_and_grad


class Lbfgs:
    """L-BFGS (Nocedal & Wright, Algorithm 7.4) on ``data(x) + l2/2 * ||x * mask||^2``.

    ``data(x) -> (loss, grad)`` is the data term; ``mask`` is 1 on penalised entries (weights)
    and 0 elsewhere (biases). ``set_l2`` moves to another L2 without a data pass, ``switch`` to
    another data term (the refit on all rows) at a point where its value and gradient are known.

    The direction comes from the compact form of the inverse Hessian (Byrd, Nocedal & Schnabel
    1994): two matrix-vector products with the ``memory`` stored pairs and a triangular solve of
    their size, instead of the two-loop recursion's 4 x ``memory`` vector passes with a temporary
    each, which took a quarter of a 4,096 x 102 fit. The pairs are float32: they are differences of
    float32 iterates and gradients, so float64 would hold no more information at twice the memory.
    Their inner products come from float32 BLAS, whose blocked sums were measured within 1e-6 of
    |s| |y| of float64 ones on such a fit; a pair whose curvature s.y is not well above that
    (``_convex``) is not stored.
    """

    def __init__(self, data, x, l2, mask, memory=8):
        self.data, self.mask, self.l2, self.memory = data, mask, float(l2), memory
        self.x = np.array(x, dtype=np.float32)
        self.f, self.g = self._fg(self.x)
        # rows [0, memory) hold s, rows [memory, 2 memory) the y of the same slot; ``order`` lists
        # the slots in use, oldest first; ``gram`` holds all the rows' inner products
        self.rows = np.zeros((2 * memory, self.x.size), np.float32)
        self.gram = np.zeros((2 * memory, 2 * memory))
        self.order = []
        self.evals = 1

    def _fg(self, x):
        return self._penalised(x, *self.data(x))

    def _penalised(self, x, f, g):
        if self.l2:
            xm = x * self.mask
            f += 0.5 * self.l2 * float(np.dot(xm, xm))
            g = g + np.float32(self.l2) * xm
        return f, g

    def data_fg(self):
        """(value, gradient) of the data term alone at the current point."""
        xm = self.x * self.mask
        return self.f - 0.5 * self.l2 * float(np.dot(xm, xm)), self.g - np.float32(self.l2) * xm

    def set_l2(self, l2):
        delta = float(l2) - self.l2
        xm = self.x * self.mask
        self.f += 0.5 * delta * float(np.dot(xm, xm))
        self.g += np.float32(delta) * xm
        m = self.memory
        for j in self.order:
            self.rows[m + j] += np.float32(delta) * (self.rows[j] * self.mask)
        if self.order:
            self.gram = (self.rows @ self.rows.T).astype(np.float64)
        # a weaker L2 flattens the curvature: a pair may no longer describe a convex direction
        gram = self.gram
        self.order = [j for j in self.order if self._convex(gram[j, m + j], gram[j, j], gram[m + j, m + j])]
        self.l2 = float(l2)

    def switch(self, data, x, l2, f, g):
        """Continue from ``x`` at penalty ``l2`` on the data term ``data``, which has value ``f``
        and gradient ``g`` there.

        The curvature pairs are dropped. At a weak L2 they hold the large inverse curvature of
        the directions the old rows leave flat, and the new rows' gradient points along such
        directions: the quasi-Newton step then fits the new rows exactly (measured on the bench's
        Flowers-size features: 86% test top-1 after the refit, against 92% without the pairs).
        A first step along the gradient, sized by the line search, is the cautious start.
        """
        self.data, self.l2, self.order = data, float(l2), []
        self.x = np.array(x, dtype=np.float32)
        self.f, self.g = self._penalised(self.x, f, g)

    @staticmethod
    def _convex(sy, ss, yy):
        return sy > 1e-5 * math.sqrt(ss * yy)

    def _add_pair(self, s, y):
        if not self._convex(float(np.dot(s, y)), float(np.dot(s, s)), float(np.dot(y, y))):
            return
        m = self.memory
        j = self.order.pop(0) if len(self.order) == m else min(set(range(m)) - set(self.order))
        self.rows[j], self.rows[m + j] = s, y
        new = (self.rows @ self.rows[[j, m + j]].T).astype(np.float64)
        self.gram[:, j], self.gram[:, m + j] = new[:, 0], new[:, 1]
        self.gram[j, :], self.gram[m + j, :] = new[:, 0], new[:, 1]
        self.order.append(j)

    def _direction(self):
        if not self.order:
            # Newton's step for the penalty alone where it dominates (strong L2: nearly exact),
            # unit length otherwise; the line search scales it either way
            return -self.g / np.float32(max(1e-12, self.l2, float(np.linalg.norm(self.g))))
        m, k = self.memory, np.array(self.order)
        proj = (self.rows @ self.g).astype(np.float64)
        a, b = proj[k], proj[m + k]  # S^T g, Y^T g
        sy, yy = self.gram[np.ix_(k, m + k)], self.gram[np.ix_(m + k, m + k)]
        gamma = sy[-1, -1] / yy[-1, -1]
        r = np.triu(sy)
        u = np.linalg.solve(r, a)
        p = np.linalg.solve(r.T, (np.diag(np.diag(sy)) + gamma * yy) @ u - gamma * b)
        coef = np.zeros(2 * m, np.float32)
        coef[k], coef[m + k] = p, -gamma * u
        d = -(np.float32(gamma) * self.g + coef @ self.rows)
        if not float(np.dot(self.g, d)) < 0:  # rounding spoilt the direction: restart
            self.order = []
            d = -self.g / np.float32(max(1e-12, float(np.linalg.norm(self.g))))
        return d

    def run(self, max_iter, ftol=1e-4, gtol=None):
        """Up to ``max_iter`` iterations; stops early when one decreases the objective by less than
        ``ftol`` of it, when the line search finds no decrease, or (``gtol``) once the gradient
        norm is at most ``gtol`` times what it was at the start. Returns the iterations done."""
        g_stop = None if gtol is None else gtol * float(np.linalg.norm(self.g))
        for it in range(1, max_iter + 1):
            if g_stop is not None and float(np.linalg.norm(self.g)) <= g_stop:
                return it - 1
            step = self._line_search(self._direction())
            if step is None:
                return it - 1
            x, f, g = step
            self._add_pair(x - self.x, g - self.g)
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
        # at W = 0, where every fit starts, the logits are the bias: half a pass saved
        bias_only = not model.p["W"].any()
        for start in range(0, n, block):
            idx = rows[start:start + block]
            x = unpack_features(packed, width, idx)
            if bias_only:
                z, cache = np.broadcast_to(model.p["b"], (idx.size, model.p["b"].size)), None
            else:
                z, cache = model.forward(x)
            part, g = loss_and_grad(z, y[idx], n)
            loss += part
            grad += model.flat(model.grads(x, g, cache, 0.0))
        return loss, grad

    return data


def decay_mask(model):
    return model.flat({k: np.full(a.shape, k in model.decay, np.float32) for k, a in model.p.items()})


def l2_path(opt, grid, unit, max_iter, gtol, patience, score, history, progress):
    """Walk ``grid`` (strongest L2 first) with ``opt``; returns (best l2, its parameters, and the
    data term's value and gradient there: a refit on more rows starts from them).

    ``opt`` penalises ``l2 * unit`` for each ``l2`` of the grid (a change of feature scale), and
    runs ``max_iter`` iterations at most at each, fewer once its gradient norm is down to ``gtol``.
    ``score(theta) -> (val_loss, val_top1)`` rates a solution on the held-out rows; the best has
    the highest accuracy, ties broken by a lower loss (frequent on small held-out sets).
    """
    best, stale = None, 0
    grid = sorted(grid, reverse=True)
    bar = progress_bar(len(grid), "fit (L2 path)", progress)
    for l2 in grid:
        t0, evals = time.perf_counter(), opt.evals
        opt.set_l2(l2 * unit)
        iters = opt.run(max_iter, gtol=gtol)
        val_loss, val_top1 = score(opt.x)
        history.append({"phase": "l2-path", "l2": l2, "iterations": iters, "passes": opt.evals - evals,
                        "train_loss": opt.f, "val_loss": val_loss, "val_top1": val_top1,
                        "seconds": time.perf_counter() - t0})
        if hasattr(bar, "update"):
            bar.update(1)
            bar.set_postfix({"l2": "%.0e" % l2, "val_top1": round(val_top1, 4)}, refresh=False)
        if best is None or val_top1 > best[0] or (val_top1 == best[0] and val_loss < best[1]):
            best, stale = (val_top1, val_loss, l2, opt.x.copy()) + opt.data_fg(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if hasattr(bar, "close"):
        bar.close()
    return best[2:]
