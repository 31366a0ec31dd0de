"""Training curves as a PNG (matplotlib, headless)."""

import json

from host.manifest import atomic_path


def read_metrics(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(rows, out_png, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(ep, [r["test_loss"] for r in rows], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(ep, [100 * r["train_top1"] for r in rows], "o-", label="train top-1")
    ax_acc.plot(ep, [100 * r["test_top1"] for r in rows], "s-", label="test top-1")
    ax_acc.plot(ep, [100 * r["test_top5"] for r in rows], "^--", label="test top-5")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
