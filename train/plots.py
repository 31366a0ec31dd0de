"""Training curves as a PNG (matplotlib, headless)."""

import json

from bnn_transfer.host.atomic import atomic_path
from bnn_transfer.host.report import PNG_METADATA


def read_metrics(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(rows, out_png, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key, scale=1):
        """(epochs, values) of the rows that have ``key``: a held-out run scores its test split once, at the end."""
        have = [r for r in rows if key in r]
        return [r["epoch"] for r in have], [scale * r[key] for r in have]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, marker in (("train", "o-"), ("val", "d-"), ("test", "s-")):
        if any(split + "_loss" in r for r in rows):
            ax_loss.plot(*series(split + "_loss"), marker, label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    for key, marker in (("train_top1", "o-"), ("val_top1", "d-"), ("test_top1", "s-"), ("test_top5", "^--")):
        if any(key in r for r in rows):
            ax_acc.plot(*series(key, 100), marker, label=key.replace("_top", " top-"))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
