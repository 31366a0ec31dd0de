"""``fit_head``: train a head on binary features, choosing its L2 on a held-out split.

float head: full-batch L-BFGS along an L2 path (``lbfgs.py``); the L2 with the best held-out
accuracy is refitted on every row, warm-started. binary and mlp heads: minibatch Adam with early
stopping (``adam.py``) at a fixed L2. Whatever was chosen, and why, is written into the head's
``meta["train"]["l2"]``.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple, Union, get_type_hints

import numpy as np

from ..errors import BnnError
from ..features import pack_features, packed_width, unpack_features
from . import adam, lbfgs
from .head import VARIANTS, _check_classes, _check_labels
from .model import Model

SOLVERS = ("lbfgs", "adam")
L2_GRID = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
# Below this many held-out rows (or with fewer than 2 classes among them) one L2 cannot be told
# from its neighbours: the fit falls back to FALLBACK_L2 and says so.
MIN_VAL_ROWS = 20
FALLBACK_L2 = 1e-4


@dataclass
class HeadConfig:
    """Hyperparameters of ``fit_head``.

    - ``solver``: "lbfgs" (full batch, float head only) or "adam" (minibatches); None picks lbfgs
      for the float head and adam for the others: the binary head's straight-through gradient
      needs minibatches, and the mlp's L2 path would need one solve from scratch per L2 (a
      strong L2 warm start leaves its ReLUs dead).
    - ``weight_decay``: L2 penalty ``wd/2 * ||W||^2`` on the weight matrices (not on biases or
      scales), for features scaled by 1/sqrt(D) (the trainer scales internally and folds the
      factor into the saved weights), so one value suits any feature width. None: lbfgs chooses
      it from ``l2_grid`` on the held-out rows; adam uses ``FALLBACK_L2``.
    - ``path_iter``: most L-BFGS iterations per L2 of the path (a continuation: each value starts
      where the previous one ended, with its curvature memory), and for the warm-started refit on
      all rows; fewer once the gradient norm is down to ``path_gtol`` of its value when the L2 was
      set (or the refit began): one L2 is solved that far before it is scored (see ``lbfgs.py``).
    - ``max_iter``: L-BFGS iterations of a fit at one given (or fallback) L2, from zero.
    - ``val_fraction`` of each class is held out to choose the L2 (lbfgs) or the epoch (adam).
      With ``refit`` the chosen head is then trained again on every row: warm-started for lbfgs
      (None: on), from scratch for as many epochs for adam (None: off). 0 holds nothing out.
    - ``epochs``, ``batch_size``, ``lr``, ``patience``: adam's. ``batch_size`` None picks
      ``n_train // 8`` clipped to [32, 512] (lbfgs unpacks that many rows at a time);
      ``patience`` also ends the L2 path after that many weaker L2 values without a better
      held-out accuracy.
    - ``calibrate``: rescale the final logits by one factor fitted on the validation rows
      (temperature scaling, Guo et al. 2017), which makes the probabilities mean something
      without changing any prediction.
    - ``hidden``: width of the mlp's hidden layer.
    """

    variant: str = "float"
    solver: Optional[str] = None
    weight_decay: Optional[float] = None
    l2_grid: Tuple[float, ...] = L2_GRID
    path_iter: int = 3
    path_gtol: float = 0.5
    max_iter: int = 30
    epochs: int = 60
    batch_size: Optional[int] = None
    lr: float = 1e-2
    val_fraction: float = 0.1
    patience: int = 2
    seed: int = 0
    hidden: int = 256
    refit: Optional[bool] = None
    calibrate: bool = True

    def resolved_solver(self):
        return self.solver or ("lbfgs" if self.variant == "float" else "adam")


# The knobs ``--solver-option KEY=VALUE`` may set: every HeadConfig field but those with options of their own
SOLVER_OPTIONS = tuple(f.name for f in fields(HeadConfig) if f.name not in ("variant", "seed", "l2_grid"))
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _option_value(name, value, kind):
    """``value`` (a number or text from the command line) as a ``kind`` field, or BnnError."""
    optional = getattr(kind, "__origin__", None) is Union
    base = next(a for a in kind.__args__ if a is not type(None)) if optional else kind
    text = str(value).strip().lower()
    if optional and text == "none":
        return None
    if base is bool and text in _TRUE + _FALSE:
        return text in _TRUE
    if base is int and isinstance(value, int) or base is float and isinstance(value, (int, float)) \
            or base is str and isinstance(value, str):
        return base(value)
    raise BnnError("--solver-option %s=%s: expected %s%s" % (name, value, base.__name__,
                                                               " or none" if optional else ""))


def head_config(variant, seed, options):
    """The ``HeadConfig`` of ``variant`` and ``seed`` with ``options`` ({name: value} of ``--solver-option``,
    one of SOLVER_OPTIONS each, documented in HeadConfig), checked: BnnError before any work."""
    unknown = sorted(set(options) - set(SOLVER_OPTIONS))
    if unknown:
        raise BnnError("--solver-option %s: unknown (valid: %s)" % (", ".join(unknown), ", ".join(SOLVER_OPTIONS)))
    hints = get_type_hints(HeadConfig)
    cfg = HeadConfig(variant=variant, seed=seed, **{k: _option_value(k, v, hints[k]) for k, v in options.items()})
    _check_config(cfg)
    return cfg


def _check_config(cfg):
    if cfg.variant not in VARIANTS:
        raise BnnError("fit: unknown head variant %r (expected one of %s)" % (cfg.variant, ", ".join(VARIANTS)))
    if cfg.solver is not None and cfg.solver not in SOLVERS:
        raise BnnError("fit: unknown solver %r (expected one of %s)" % (cfg.solver, ", ".join(SOLVERS)))
    if cfg.variant != "float" and cfg.solver == "lbfgs":
        raise BnnError("fit: the %s head trains with adam; lbfgs fits the float head" % cfg.variant)
    if (cfg.epochs < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or not cfg.lr > 0 or cfg.hidden < 1
            or cfg.max_iter < 1 or cfg.path_iter < 1 or cfg.patience < 1 or not 0 < cfg.path_gtol < 1):
        raise BnnError("fit: epochs, batch_size, lr, hidden, max_iter, path_iter and patience must be positive, "
                       "path_gtol in (0, 1) (%r)" % (cfg,))
    if not 0 <= cfg.val_fraction < 1:
        raise BnnError("fit: val_fraction must be in [0, 1), got %r" % (cfg.val_fraction,))
    if cfg.weight_decay is not None and not cfg.weight_decay >= 0:
        raise BnnError("fit: weight_decay must be >= 0, got %r" % (cfg.weight_decay,))
    if not cfg.l2_grid or not all(v >= 0 for v in cfg.l2_grid):
        raise BnnError("fit: l2_grid must be non-empty and >= 0, got %r" % (cfg.l2_grid,))


def _as_packed(features, feature_width):
    f = np.asarray(features)
    if f.ndim != 2:
        raise BnnError("fit: features must be 2-D (N, D), got shape %r" % (f.shape,))
    if f.dtype == np.uint8:
        width = int(feature_width) if feature_width is not None else 8 * f.shape[1]
        if width < 1 or packed_width(width) != f.shape[1]:
            raise BnnError("fit: %d packed bytes per row cannot hold %d features" % (f.shape[1], width))
        return f, width
    width = f.shape[1]
    if feature_width is not None and int(feature_width) != width:
        raise BnnError("fit: features have width %d, feature_width says %d" % (width, feature_width))
    packed = np.concatenate([pack_features(f[i:i + 4096]) for i in range(0, f.shape[0], 4096)]) \
        if f.shape[0] else np.zeros((0, packed_width(width)), np.uint8)
    return packed, width


def stratified_split(y, fraction, rng):
    """Indices (train, val): ``fraction`` of each class held out, at least one row kept for training."""
    if fraction <= 0:
        return np.arange(y.shape[0]), np.zeros(0, np.int64)
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        n_val = min(rows.size - 1, int(round(fraction * rows.size)))
        if n_val > 0:
            val.append(rng.permutation(rows)[:n_val])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(y.shape[0]), val, assume_unique=True)
    return train, val


def _l2_plan(cfg, solver, y, val_idx):
    """(fixed L2 or None to choose one, the record of that decision for the head file)."""
    if cfg.weight_decay is not None:
        return cfg.weight_decay, {"value": cfg.weight_decay, "chosen_by": "config"}
    if solver == "adam":
        return FALLBACK_L2, {"value": FALLBACK_L2, "chosen_by": "default",
                             "reason": "adam trains one L2 per run; the L2 path is the float head's (lbfgs)"}
    n_classes_val = np.unique(y[val_idx]).size
    if val_idx.size < MIN_VAL_ROWS or n_classes_val < 2:
        reason = ("held-out split too small to choose L2 from: %d rows of %d classes (need >= %d rows of >= 2 "
                  "classes; more images per class or a larger val_fraction)" % (val_idx.size, n_classes_val,
                                                                               MIN_VAL_ROWS))
        return FALLBACK_L2, {"value": FALLBACK_L2, "chosen_by": "fallback", "reason": reason}
    return None, {"chosen_by": "held-out accuracy", "grid": sorted(cfg.l2_grid, reverse=True)}


def fit_head(features, labels, classes, cfg=None, progress=True, feature_width=None, meta=None):
    """Train a head on binary features; returns ``(Head, history)``.

    ``features``: packed uint8 bits (N, ceil(D/8)) with ``feature_width`` = D (default 8 x
    bytes), or +1/-1 values (N, D) (packed once here, so the float matrix can be freed).
    ``labels``: ints in [0, len(classes)). ``history``: one dict per L2 of the path (lbfgs:
    l2, iterations, train_loss, val_loss, val_top1, seconds) or per epoch (adam: epoch instead
    of l2 and iterations). The returned head's ``meta`` is ``meta`` plus a ``"train"`` entry: the
    configuration, the solver, the L2 and how it was chosen, and the held-out accuracy.
    Deterministic for ``cfg.seed`` on a given machine and BLAS.
    """
    cfg = cfg if cfg is not None else HeadConfig()
    _check_config(cfg)
    classes = _check_classes(list(classes), "fit")
    packed, width = _as_packed(features, feature_width)
    y = _check_labels(labels, len(classes), "fit")
    if y.shape[0] != packed.shape[0]:
        raise BnnError("fit: %d labels for %d feature rows" % (y.shape[0], packed.shape[0]))
    if y.shape[0] == 0:
        raise BnnError("fit: no training rows")
    present = np.unique(y)
    if present.size < 2:
        raise BnnError("fit: the training rows hold %s of %d classes (%s); a classifier needs at least two"
                       % ("one" if present.size else "none", len(classes), classes[int(present[0])]))

    solver = cfg.resolved_solver()
    rng = np.random.default_rng(cfg.seed)
    fraction = cfg.val_fraction
    if solver == "lbfgs" and cfg.weight_decay is None and fraction > 0:
        # The L2 is refitted on every row once chosen: holding out MIN_VAL_ROWS to choose it costs the final
        # head nothing, where the fallback's fixed L2 cost 1.7 points at 10 images x 10 classes (the demo's
        # Flowers-like task: 71.3% -> 73.0%)
        fraction = max(fraction, min(0.5, MIN_VAL_ROWS / max(1, y.shape[0])))
    train_idx, val_idx = stratified_split(y, fraction, rng)
    batch_size = int(cfg.batch_size) if cfg.batch_size else min(512, max(32, train_idx.size // 8))
    scale = 1.0 / math.sqrt(width)
    model = Model(cfg.variant, width, len(classes), cfg.hidden, rng)
    refit = cfg.refit if cfg.refit is not None else solver == "lbfgs"
    wd, l2 = _l2_plan(cfg, solver, y, val_idx)
    history = []

    def score(m):
        return _val_metrics(m, packed, width, y, val_idx, scale, batch_size)

    info = {"config": asdict(cfg), "solver": solver, "n_train": int(train_idx.size), "n_val": int(val_idx.size)}
    if solver == "lbfgs":
        # raw +-1 features (see lbfgs.py): the penalty on W is width times the scaled one
        xscale = 1.0
        mask = lbfgs.decay_mask(model)
        # Start from the best bias for W = 0 (the class priors): from a zero bias, the first
        # gradient is mostly the bias', and strongly penalised solutions predict the priors only.
        counts = np.bincount(y[train_idx], minlength=len(classes)) + 1.0
        model.p["b"][:] = np.log(counts / counts.sum())

        def score_theta(theta):
            np.copyto(model.theta, theta)
            return _val_metrics(model, packed, width, y, val_idx, xscale, batch_size)

        opt = lbfgs.Lbfgs(lbfgs.data_term(model, packed, width, y, train_idx, batch_size), model.theta,
                          0.0 if wd is None else wd * width, mask)
        if wd is None:
            wd, theta, f_data, g_data = lbfgs.l2_path(opt, cfg.l2_grid, width, cfg.path_iter, cfg.path_gtol,
                                                      cfg.patience, score_theta, history, progress)
            l2["value"] = wd
        else:
            iters = opt.run(cfg.max_iter)
            theta, (f_data, g_data) = opt.x, opt.data_fg()
            rec = {"phase": "fit", "l2": wd, "iterations": iters, "passes": opt.evals, "train_loss": opt.f}
            if val_idx.size:
                rec["val_loss"], rec["val_top1"] = score_theta(theta)
            history.append(rec)
        np.copyto(model.theta, theta)
        best = next(h for h in history if h["l2"] == wd)
    else:
        xscale = scale
        best_epoch = adam.train_epochs(model, packed, width, y, train_idx, val_idx, cfg, wd, batch_size, scale, rng,
                                       score, history, "fit", progress)
        best = history[best_epoch - 1]
        info.update(best_epoch=best_epoch, epochs_run=len(history), batch_size=batch_size)
    info["l2"] = l2
    if "val_top1" in best:
        info["val_top1"], info["val_loss"] = best["val_top1"], best["val_loss"]

    temperature = 1.0
    if cfg.calibrate and val_idx.size:
        z = np.concatenate([model.forward(unpack_features(packed, width, val_idx[i:i + batch_size], scale=xscale))[0]
                            for i in range(0, val_idx.size, batch_size)])
        temperature = 1.0 / _fit_inverse_temperature(z, y[val_idx])
    if refit and val_idx.size:
        all_rows = np.arange(y.shape[0])
        if solver == "lbfgs":
            # Warm-started at the chosen point, whose objective on all rows is the training rows'
            # (known from the path) plus the held-out rows' share: a pass over a tenth of the rows
            # instead of all of them.
            f_val, g_val = lbfgs.data_term(model, packed, width, y, val_idx, batch_size)(theta)
            share = val_idx.size / y.shape[0]
            evals = opt.evals
            opt.switch(lbfgs.data_term(model, packed, width, y, all_rows, batch_size), theta, wd * width,
                       (1 - share) * f_data + share * f_val, np.float32(1 - share) * g_data + np.float32(share) * g_val)
            iters = opt.run(cfg.path_iter, gtol=cfg.path_gtol)
            np.copyto(model.theta, opt.x)
            history.append({"phase": "refit", "l2": wd, "iterations": iters, "passes": opt.evals - evals,
                            "train_loss": opt.f})
        else:
            model = Model(cfg.variant, width, len(classes), cfg.hidden, np.random.default_rng(cfg.seed))
            adam.train_epochs(model, packed, width, y, all_rows, np.zeros(0, np.int64), cfg, wd, batch_size, scale,
                              rng, score, history, "refit", progress, epochs=best_epoch)
    if solver == "lbfgs":
        model.p["W"] *= np.float32(1.0 / scale)  # back to the parametrisation of scaled features
    # a refit head has about the same logit scale (same L2, or as many epochs): same temperature
    model.scale_logits(1.0 / temperature)
    info["temperature"] = temperature
    info["refit"] = bool(refit and val_idx.size)
    head_meta = dict(meta or {})
    head_meta["train"] = info
    return model.to_head(classes, width, head_meta), history
def _fit_inverse_temperature(z, y, iters=50, lo=1e-2, hi=1e4):
    """The factor b in [lo, hi] minimising the mean cross-entropy of ``b * z``: 1-D Newton.

    The loss is convex in b. The bounds matter where the optimum degenerates: a head with no
    signal on the validation rows wants b -> 0 (uniform probabilities), which would erase its
    weights; separable validation rows want b -> infinity.
    """
    z = z.astype(np.float64)
    zy = z[np.arange(y.shape[0]), y]
    b = 1.0
    for _ in range(iters):
        bz = b * z
        bz -= bz.max(axis=1, keepdims=True)
        p = np.exp(bz)
        p /= p.sum(axis=1, keepdims=True)
        ez = (p * z).sum(axis=1)
        grad = float(np.mean(ez - zy))
        hess = float(np.mean((p * z * z).sum(axis=1) - ez * ez))
        if hess <= 1e-12:
            break  # flat: e.g. a single class or constant logits
        new = b - grad / hess
        # Newton may overshoot to b <= 0 where the loss is still convex but b is meaningless
        new = min(max(new, b / 10, lo), b * 10, hi)
        if abs(new - b) <= 1e-7 * b:
            b = new
            break
        b = new
    return b


def _val_metrics(model, packed, width, y, rows, scale, batch_size):
    """Mean loss and top-1 accuracy on ``rows``, unpacking ``batch_size`` rows at a time."""
    loss, correct = 0.0, 0
    for start in range(0, rows.size, batch_size):
        idx = rows[start:start + batch_size]
        z, _ = model.forward(unpack_features(packed, width, idx, scale=scale))
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss += float(np.sum(lse - z[np.arange(idx.size), y[idx]]))
        correct += int(np.sum(z.argmax(axis=1) == y[idx]))
    return loss / rows.size, correct / rows.size
