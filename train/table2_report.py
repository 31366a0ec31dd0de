"""``python -m train table2``'s report: each row's result, table2.md, table2.json and table2.png.

Rewritten after every row, so an interrupted command leaves a partial table ("—" where a row has not
finished); the accuracies are fractions in table2.json, percentages in table2.md, ours beside the paper's.
"""

import os

import numpy as np

from bnn_transfer.host.artifacts import RUN_MANIFEST
from bnn_transfer.host.atomic import atomic_path, write_bytes_atomic
from bnn_transfer.host.manifest import finalize_manifest, new_manifest, read_json, sha256_file
from bnn_transfer.host.report import PNG_METADATA

from .table2_paper import PAPER_CITATION, PAPER_IMAGENET, PAPER_TABLE2, PRETRAIN_HEADS, ROWS, TARGETS, row_group
from .table2_rows import read_row, source_of

REPORT_MD = "table2.md"
REPORT_JSON = "table2.json"
REPORT_PNG = "table2.png"


# --- results -----------------------------------------------------------------------------------------

def _frac(pct):
    return round(pct / 100.0, 4)


def _result(job):
    """What the row's directory says about this plan: status, epochs and accuracies (fractions or None)."""
    rec = read_row(job)
    res = {"status": "not run", "epochs_done": 0, "top1": None, "top5": None}
    if rec is None:
        return res
    params, mode, finished, epochs_done, m = rec
    if mode != job.mode or params != job.fit.identity():
        res["status"] = "other parameters"
        return res
    res["epochs_done"] = epochs_done
    if finished and m is not None:
        res.update(status="done", top1=float(m["final"]["test_top1"]), top5=float(m["final"]["test_top5"]))
    else:
        res["status"] = "interrupted"
    return res


def collect(cfg, jobs, elsewhere):
    """(pretraining results, table rows) as plain dicts: the content of table2.json."""
    pretrain = []
    for precision, _ in PRETRAIN_HEADS:
        paper = PAPER_IMAGENET[precision]
        entry = {"id": "imagenet-%s" % precision, "group": row_group(precision), "precision": precision,
                 "paper_top1": _frac(paper[0]), "paper_top5": _frac(paper[1])}
        if precision in elsewhere:
            entry.update(_given_run(elsewhere[precision]), run_dir=elsewhere[precision])
        else:
            job = next(j for j in jobs if j.precision == precision)
            entry.update(_result(job), run_dir=job.fit.out, epochs=job.fit.epochs, dataset=job.fit.dataset)
        pretrain.append(entry)
    rows = []
    for job in jobs:
        if job.row is None:
            continue
        p1, p5 = PAPER_TABLE2[job.row.key][job.target.key]
        rows.append(dict(
            id=job.id, group=job.row.group, row=job.row.key, label=job.row.label, target=job.target.key,
            column=job.target.title, dataset=job.fit.dataset, dataset_options=job.fit.dataset_options,
            mode=job.mode, epochs=job.fit.epochs, run_dir=job.fit.out, paper_top1=_frac(p1), paper_top5=_frac(p5),
            **_result(job),
        ))
    return pretrain, rows


def _given_run(path):
    manifest = os.path.join(path, RUN_MANIFEST)
    if not os.path.exists(manifest):
        return {"status": "given", "top1": None, "top5": None}
    final = read_json(manifest, "run manifest").get("final") or {}
    return {"status": "given", "epochs_done": final.get("epoch"),
            "top1": final.get("test_top1"), "top5": final.get("test_top5")}


# --- report ------------------------------------------------------------------------------------------

def write_report(cfg, jobs, elsewhere, plot):
    """table2.md, [table2.png] and the manifest table2.json (written last: it hashes the other two)."""
    pretrain, rows = collect(cfg, jobs, elsewhere)
    write_bytes_atomic(os.path.join(cfg.out, REPORT_MD), render_markdown(cfg, pretrain, rows).encode("utf-8"))
    if plot:
        plot_table2(cfg, rows, os.path.join(cfg.out, REPORT_PNG))
    files = [n for n in (REPORT_MD, REPORT_PNG) if os.path.exists(os.path.join(cfg.out, n))]
    inputs = {}
    for job in jobs:
        manifest = os.path.join(job.fit.out, RUN_MANIFEST)
        if os.path.exists(manifest):
            inputs[job.id] = {"path": manifest, "sha256": sha256_file(manifest)}
    params = {k: getattr(cfg, k) for k in ("preset", "epochs_pretrain", "epochs_scratch", "epochs_finetune",
                                           "synthetic", "synthetic_scale", "batch_size", "seed")}
    params["imagenet_runs"] = dict(elsewhere)
    m = new_manifest(
        "train", "table2", params=params, inputs=inputs, synthetic=cfg.synthetic,
        paper={"citation": PAPER_CITATION,
               "table2": {r: {t: {"top1": _frac(v[0]), "top5": _frac(v[1])} for t, v in cols.items()}
                          for r, cols in PAPER_TABLE2.items()},
               "imagenet": {p: {"top1": _frac(v[0]), "top5": _frac(v[1])} for p, v in PAPER_IMAGENET.items()}},
        pretrain=pretrain, rows=rows,
    )
    return finalize_manifest(cfg.out, m, REPORT_JSON, files=files)


def _pct(x):
    return "—" if x is None else "%.1f" % (100.0 * x)


def _cell(ours, paper):
    return "%s / %s" % (_pct(ours), _pct(paper))


def table_lines(rows):
    """The table itself, shaped like the paper's: row groups FP / Binary, (top-1, top-5) per dataset."""
    lines = [
        "| | | " + " | ".join("%s top-1 | %s top-5" % (t.title, t.title) for t in TARGETS) + " |",
        "|---|---|" + "---:|" * (2 * len(TARGETS)),
    ]
    for r in ROWS:
        cells = []
        for t in TARGETS:
            res = next(x for x in rows if x["row"] == r.key and x["target"] == t.key)
            cells += [_cell(res["top1"], res["paper_top1"]), _cell(res["top5"], res["paper_top5"])]
        first_of_group = r is next(x for x in ROWS if x.group == r.group)
        lines.append("| %s | %s | %s |" % (r.group if first_of_group else "", r.label, " | ".join(cells)))
    return lines


def render_markdown(cfg, pretrain, rows):
    lines = []
    if cfg.synthetic:
        lines += [
            "# Table 2 on synthetic stand-ins (not the paper's datasets)", "",
            "> **Synthetic stand-ins.** ImageNet, Flowers, Birds and Indoor scenes are replaced by generated",
            "> data (`--synthetic`) and the `%s` preset. This checks the flow end to end; our numbers are"
            % cfg.preset,
            "> not comparable with the paper's, which are shown only to give the table its shape.", "",
        ]
        for key in ("imagenet", *[t.key for t in TARGETS]):
            name, _, opts = source_of(cfg, key)
            title = "ImageNet" if key == "imagenet" else next(t.title for t in TARGETS if t.key == key)
            lines.append("- %s → `%s` %s" % (title, name, ", ".join("%s=%s" % kv for kv in sorted(opts.items()))))
        lines.append("")
    else:
        lines += ["# Table 2: transfer learning with binary neural networks, ours beside the paper's", ""]
    lines += [
        "Top-1 and top-5 test accuracy (%%) per dataset; each cell is **ours / paper** (— : not run yet). "
        "Preset `%s`; epochs: ImageNet pretraining %d, trained from scratch %d, fine-tuned %d (only the last "
        "layer retrained, cut at fc3)." % (cfg.preset, cfg.epochs_pretrain, cfg.epochs_scratch, cfg.epochs_finetune),
        "",
        *table_lines(rows),
    ]
    lines += ["", "![top-1 accuracy, ours vs the paper's](%s)" % REPORT_PNG, "",
              "## Pretraining on ImageNet%s" % (" (stand-in)" if cfg.synthetic else ""), "",
              "| network | top-1 | top-5 | run |", "|---|---:|---:|---|"]
    for p in pretrain:
        lines.append("| %s | %s | %s | `%s` (%s) |" % (p["group"], _cell(p["top1"], p["paper_top1"]),
                                                      _cell(p["top5"], p["paper_top5"]), _rel(cfg, p["run_dir"]),
                                                      p["status"]))
    lines += ["", "## Runs", "", "| row | dataset | status | epochs | directory |", "|---|---|---|---:|---|"]
    for p in pretrain:
        if p["status"] != "given":
            lines.append("| %s | %s | %s | %d/%d | `%s` |"
                         % (p["id"], p["dataset"], p["status"], p["epochs_done"], p["epochs"], _rel(cfg, p["run_dir"])))
    for r in rows:
        lines.append("| %s | %s | %s | %d/%d | `%s` |"
                     % (r["id"], r["dataset"], r["status"], r["epochs_done"], r["epochs"], _rel(cfg, r["run_dir"])))
    lines += ["", "Paper: %s." % PAPER_CITATION,
              "Rerun the same command to resume: finished rows are skipped, an interrupted one continues "
              "from its last checkpoint.", ""]
    return "\n".join(lines)


def _rel(cfg, path):
    """Paths inside the report directory relative to it (the report moves with it), others absolute."""
    if os.path.commonpath([path, cfg.out]) != cfg.out:
        return path
    return os.path.relpath(path, cfg.out).replace(os.sep, "/")


def plot_table2(cfg, rows, out_png):
    """Grouped bars per dataset: our top-1 beside the paper's for every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(4.6 * len(TARGETS), 4.4), sharey=True)
    width = 0.38
    for ax, t in zip(axes, TARGETS):
        res = [next(x for x in rows if x["row"] == r.key and x["target"] == t.key) for r in ROWS]
        x = np.arange(len(ROWS))
        ours = [np.nan if v["top1"] is None else 100.0 * v["top1"] for v in res]
        ax.bar(x - width / 2, ours, width, label="ours", color="#1f77b4")
        ax.bar(x + width / 2, [100.0 * v["paper_top1"] for v in res], width, label="paper", color="#bbbbbb")
        for xi, v in zip(x, ours):
            label = "—" if np.isnan(v) else "%.0f" % v
            ax.text(xi - width / 2, 1.0 if np.isnan(v) else v + 1.0, label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([r.short for r in ROWS], rotation=30, ha="right")
        ax.set_title(t.title + (" (stand-in)" if cfg.synthetic else ""))
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 test accuracy (%)")
    axes[0].legend(loc="upper left")
    fig.suptitle("Table 2: ours vs the paper's%s" % (" (synthetic stand-ins: not comparable)" if cfg.synthetic else ""))
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
