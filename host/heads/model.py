"""A head in its training parametrisation, and the cross-entropy it is trained on.

Inputs are scaled by 1/sqrt(D), so one step size and one L2 grid suit any feature width; the
factor is folded into the saved weights. The binary head keeps latent float weights whose signs
are its weights.
"""

import math

import numpy as np

from .head import Head


class Model:
    """A head in the training parametrisation: inputs scaled by 1/sqrt(D), latent binary weights."""

    def __init__(self, variant, width, n_classes, hidden, rng):
        self.variant = variant
        self.decay = {"float": ("W",), "binary": ("W",), "mlp": ("W1", "W2")}[variant]
        f32 = np.float32
        if variant == "float":
            # zero start: softmax regression is convex, and zeros keep runs comparable across seeds
            self.p = {"W": np.zeros((width, n_classes), f32), "b": np.zeros(n_classes, f32)}
        elif variant == "binary":
            # Small latent weights, so that signs follow the first gradients; x_s @ sign(W) then
            # has unit variance per class, which a scale of 1 starts from.
            self.p = {"W": rng.uniform(-1e-3, 1e-3, (width, n_classes)).astype(f32),
                      "scale": np.ones(n_classes, f32), "bias": np.zeros(n_classes, f32)}
        else:
            # scaled inputs have unit norm, so N(0, 1) first-layer weights give unit-variance units
            self.p = {"W1": rng.standard_normal((width, hidden)).astype(f32), "b1": np.zeros(hidden, f32),
                      "W2": (rng.standard_normal((hidden, n_classes)) * math.sqrt(2.0 / hidden)).astype(f32),
                      "b2": np.zeros(n_classes, f32)}
        # One flat buffer behind the named arrays: L-BFGS works on vectors, Adam on the names,
        # and keeping the best parameters is one copy.
        self.theta = np.concatenate([a.ravel() for a in self.p.values()])
        views, start = {}, 0
        for k, a in self.p.items():
            views[k] = self.theta[start:start + a.size].reshape(a.shape)
            start += a.size
        self.p = views

    def flat(self, grads):
        """``grads`` (a dict like ``p``) as one vector in the layout of ``theta``."""
        return np.concatenate([grads[k].ravel() for k in self.p])

    def forward(self, x):
        p = self.p
        if self.variant == "float":
            return x @ p["W"] + p["b"], None
        if self.variant == "binary":
            wb = np.where(p["W"] >= 0, np.float32(1), np.float32(-1))
            a = x @ wb
            return a * p["scale"] + p["bias"], (wb, a)
        h = x @ p["W1"] + p["b1"]
        np.maximum(h, 0, out=h)
        return h @ p["W2"] + p["b2"], h

    def grads(self, x, g, cache, wd):
        """Gradients of the loss plus ``wd/2 * ||decayed||^2``, given dL/dlogits ``g`` (already divided
        by the number of rows the loss averages over)."""
        p = self.p
        if self.variant == "float":
            out = {"W": x.T @ g, "b": g.sum(axis=0)}
        elif self.variant == "binary":
            wb, a = cache
            out = {"scale": (g * a).sum(axis=0), "bias": g.sum(axis=0)}
            # straight-through estimator (Courbariaux et al.): the gradient w.r.t. sign(W) passes
            # to the latent W unchanged where |W| <= 1 and is cancelled where the latent saturated
            gw = x.T @ (g * p["scale"])
            gw[np.abs(p["W"]) > 1] = 0
            out["W"] = gw
        else:
            h = cache
            gh = g @ p["W2"].T
            gh[h <= 0] = 0
            out = {"W2": h.T @ g, "b2": g.sum(axis=0), "W1": x.T @ gh, "b1": gh.sum(axis=0)}
        if wd:
            for k in self.decay:
                out[k] += np.float32(wd) * p[k]
        return out

    def penalty(self, wd):
        """``wd/2 * ||W||^2`` over the decayed weight matrices."""
        return 0.5 * wd * sum(float(np.dot(self.p[k].ravel(), self.p[k].ravel())) for k in self.decay)

    def after_step(self):
        if self.variant == "binary":
            # keep latent weights in [-1, 1], where the straight-through gradient is alive
            np.clip(self.p["W"], -1, 1, out=self.p["W"])

    def scale_logits(self, factor):
        """Multiply the logits by ``factor`` (> 0) by rescaling the last affine layer."""
        f = np.float32(factor)
        last = {"float": ("W", "b"), "binary": ("scale", "bias"), "mlp": ("W2", "b2")}[self.variant]
        for k in last:
            self.p[k] *= f

    def to_head(self, classes, width, meta):
        s = np.float32(1.0 / math.sqrt(width))
        p = self.p
        if self.variant == "float":
            params = {"W": p["W"] * s, "b": p["b"].copy()}
        elif self.variant == "binary":
            params = {"W": np.where(p["W"] >= 0, 1, -1).astype(np.int8), "scale": p["scale"] * s,
                      "bias": p["bias"].copy()}
        else:
            params = {"W1": p["W1"] * s, "b1": p["b1"].copy(), "W2": p["W2"].copy(), "b2": p["b2"].copy()}
        return Head(variant=self.variant, classes=list(classes), feature_width=width, params=params, meta=meta)


def loss_and_grad(z, y, n=None):
    """Cross-entropy of logits ``z`` (B, C) summed over the rows / ``n`` (default B), and its gradient."""
    n = y.shape[0] if n is None else n
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(y.shape[0])
    loss = float(np.sum(lse - z[rows, y])) / n
    g = np.exp(z - lse[:, None])
    g[rows, y] -= 1
    g /= np.float32(n)
    return loss, g
