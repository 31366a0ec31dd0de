"""The demo's outputs: ``summary.json`` (its manifest), ``table.md`` and ``learning_curve.png``.

``summary.json`` is a bnn-transfer manifest of kind ``demo-summary`` that hashes the other two, so a
rerun replaces exactly what an earlier demo wrote and refuses, before any work, a file of that name
it did not write (or that was edited since).
"""

import os
import platform
import time
from dataclasses import asdict

from bnn_transfer.host.atomic import atomic_path, write_bytes_atomic
from bnn_transfer.host.benchmark import cpu_model
from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.manifest import finalize_manifest, load_manifest, new_manifest
from bnn_transfer.host.report import PNG_METADATA

from .tasks import CLASSES, CURVE_TASK, TASKS

SUMMARY = "summary.json"
TABLE = "table.md"
CURVE_PNG = "learning_curve.png"
KIND = "demo-summary"
ROWS = (("scratch", "binary, trained from scratch"), ("a", "(a) fine-tuned, binary last layer"),
        ("b", "(b) fine-tuned, float last layer"))
DIGITS_ROW = "real images: digits, (b) float layer"


def check_outputs(out):
    """BnnError unless every output file is absent or this demo's own, unchanged since it wrote it."""
    summary = os.path.join(out, SUMMARY)
    listed = {}
    if os.path.lexists(summary):
        try:
            listed = load_manifest(out, SUMMARY, KIND)["files"]
        except BnnError as e:
            raise BnnError("%s: exists and is not a summary this demo wrote (or a file it lists changed: %s); "
                           "refusing to replace it (choose another --out)" % (summary, e)) from None
    for name in (TABLE, CURVE_PNG):
        if os.path.lexists(os.path.join(out, name)) and name not in listed:
            raise BnnError("%s: exists and was not written by this demo (not in %s); refusing to replace it "
                           "(choose another --out)" % (os.path.join(out, name), SUMMARY))


def _crossover(points):
    """The smallest number of training images per class from which scratch is not below (b), or None."""
    for p in points:
        if p["scratch"] >= p["b"]:
            return p["train_per_class"]
    return None


def summarize(cfg, pre, cells, digits, paths, seconds):
    """summary.json's content (accuracies as fractions)."""
    tasks, table = [], []
    for task in TASKS:
        c = cells[task.key()]
        tasks.append({"name": task.name, "like": task.like, "class_set": task.class_set, "classes": CLASSES,
                      "train_per_class": task.train_per_class, "test_images": c["test_images"],
                      "rows": {r: c[r][0] for r, _ in ROWS}, "rows_top5": {r: c[r][1] for r, _ in ROWS},
                      "scratch_epochs": c["scratch_epochs"], "scratch_val_top1": c["scratch_val_top1"],
                      "a_epochs": c["a_epochs"]})
        table += [{"row": label, "task": task.name, "top1": c[r][0], "top5": c[r][1]} for r, label in ROWS]
    table.append({"row": DIGITS_ROW, "task": "digits", "top1": digits["float"]["top1"],
                  "top5": digits["float"]["top5"]})
    points = sorted((c for c in cells.values() if c["task"] == CURVE_TASK), key=lambda c: c["train_per_class"])
    curve = {"task": CURVE_TASK.name, "test_images": points[0]["test_images"],
             "points": [{"train_per_class": c["train_per_class"], "scratch": c["scratch"][0], "a": c["a"][0],
                         "b": c["b"][0], "scratch_epochs": c["scratch_epochs"]} for c in points]}
    curve["crossover"] = _crossover(curve["points"])
    return {
        "config": asdict(cfg),
        "pretrain": {"test_top1": pre["test_top1"], "test_top5": pre["test_top5"]},
        "table": table,
        "tasks": tasks,
        "curve": curve,
        "digits": {v: {"top1": r["top1"], "top5": r["top5"], "images": r["images"]} for v, r in digits.items()},
        "images_per_s": digits["float"].get("images_per_s"),
        "paths": paths,
        "seconds": round(seconds, 1),
        "machine": {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%d", time.gmtime())},
    }


def _pct(x):
    return "%.1f%%" % (100 * x)


def format_table(summary):
    """The Table-2-shaped markdown table (top-1, top-5 in parentheses) and the lines that explain it."""
    tasks = summary["tasks"]
    lines = [
        "Transfer tasks: %d classes each of shape-texture-colour combinations never seen in pretraining (backbone "
        "pretrained on %s, top-1 %s); %d test images per task." % (
            CLASSES, summary["config"]["pretrain_dataset"], _pct(summary["pretrain"]["test_top1"]),
            tasks[0]["test_images"]),
        "",
        "| top-1 (top-5) | " + " | ".join("%s: %d per class" % (t["name"], t["train_per_class"]) for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
        "| training images per class, as in | " + " | ".join(t["like"] for t in tasks) + " |",
    ]
    for r, label in ROWS:
        lines.append("| %s | %s |" % (label, " | ".join("%s (%s)" % (_pct(t["rows"][r]), _pct(t["rows_top5"][r]))
                                                        for t in tasks)))
    d = summary["digits"]["float"]
    lines.append("| %s | %s (%s) on %d test scans |%s" % (DIGITS_ROW, _pct(d["top1"]), _pct(d["top5"]), d["images"],
                                                        " |" * (len(tasks) - 1)))
    cfg, machine = summary["config"], summary["machine"]
    lines += ["", "Scratch: epochs chosen on held-out training images (%s), then retrained on all of them. "
              "Real images: scikit-learn's 1,797 handwritten digit scans (10 classes, 8 x 8 pixels, test: a third "
              "of each class)." % ", ".join("%s %d" % (t["name"], t["scratch_epochs"]) for t in tasks),
              "",
              "`python -m demo%s` on %s, %s (%d CPUs), %.0f s; seed %d, --threads %d, --jobs %d." % (
                  " --quick" if cfg["quick"] else "", machine["date"], machine["processor"], machine["cpus"],
                  summary["seconds"], cfg["seed"], cfg["threads"], cfg["jobs"])]
    return "\n".join(lines)


def plot_curve(summary, path):
    """Top-1 of scratch, (a) and (b) against training images per class, the crossover marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["curve"]
    n = [p["train_per_class"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r, label in ROWS:
        ax.plot(n, [100 * p[r] for p in curve["points"]], "o-" if r != "scratch" else "s--", label=label)
    ax.axhline(100 / CLASSES, color="grey", lw=0.8, ls=":", label="chance")
    for t in summary["tasks"]:
        ax.axvline(t["train_per_class"], color="grey", lw=0.5, alpha=0.5)
        ax.text(t["train_per_class"], 101, t["like"], ha="center", va="bottom", fontsize=7, color="grey")
    if curve["crossover"] is not None:
        ax.annotate("scratch reaches (b)", (curve["crossover"], 100 * next(
            p["b"] for p in curve["points"] if p["train_per_class"] == curve["crossover"])),
            xytext=(0, -30), textcoords="offset points", ha="center", arrowprops={"arrowstyle": "->"})
    ax.set_xscale("log")
    ax.set_xticks(n)
    ax.set_xticklabels([str(v) for v in n])
    ax.set_xlabel("training images per class (%s task, %d classes)" % (curve["task"], CLASSES))
    ax.set_ylabel("top-1 on %d test images (%%)" % curve["test_images"])
    ax.set_ylim(0, 108)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)


def write_outputs(out, summary):
    """table.md and learning_curve.png, then summary.json hashing them (so it is written last)."""
    check_outputs(out)
    write_bytes_atomic(os.path.join(out, TABLE), (format_table(summary) + "\n").encode())
    plot_curve(summary, os.path.join(out, CURVE_PNG))
    m = new_manifest("demo", KIND, **summary)
    finalize_manifest(out, m, SUMMARY, files=[TABLE, CURVE_PNG])
