"""``python -m demo``: the whole flow on the embedded generated data, in one command.

Each stage runs as its own command, exactly as a user would type it (``python -m train fit``,
``python -m export backbone``, ``python -m build_fpga``, ``python -m host fit|eval``), so the demo
exercises the real interfaces: its result is the one JSON line each stage prints on stdout, while
the stages' progress goes to stderr untouched. Every stage skips its work when its output already
matches its inputs, so a second run only re-prints the table.

The table is shaped like the paper's Table 2 for one dataset: a binary network trained from
scratch on the transfer task against the pretrained binary backbone with a software head,
binary (variant a) or float (variant b), trained by host/ on the accelerator's features.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

from host.errors import BnnError
from host.manifest import write_bytes_atomic, write_json_atomic
from host.progress import log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DIGITS_ROW = "real images: digits, (b) float layer"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    # Its features transfer to real scans; tiny's do not (issue 15, bench transfer/digits)
    preset: str = "small"
    # Objects and pen strokes: synthetic alone does not transfer to scans
    pretrain_dataset: str = "synthetic+strokes"
    board: str = "pynq-z2"
    pretrain_epochs: int = 18
    scratch_epochs: int = 20
    seed: int = 0
    workers: int = 2
    quick: bool = False  # tiny datasets and epochs: the tests' end-to-end run

    def pretrain_options(self):
        if self.quick:  # every part of the union gets these: 12 object and 12 stroke classes
            return {"num_classes": 12, "n_train_per_class": 60, "n_test_per_class": 15}
        # strokes' 15,000 images teach what scans need; 150 objects per class keep 18 epochs within minutes
        return {"synthetic.n_train_per_class": 150}

    def transfer_options(self):
        return {"n_train_per_class": 40, "n_test_per_class": 20} if self.quick else {}


def _options(opts):
    out = []
    for k, v in sorted(opts.items()):
        out += ["--option", "%s=%s" % (k, v)]
    return out


def run_stage(args: List[str], log) -> Optional[dict]:
    """Run ``python -m <args>`` from the repo root; its result: the JSON object it printed, if it printed one.

    The stage's progress goes to stderr, straight through to ours; its stdout is its result alone.
    """
    cmd = [sys.executable, "-m"] + args
    log("$ python -m " + " ".join(args))
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise BnnError("stage failed (exit %d): python -m %s" % (proc.returncode, " ".join(args)))
    out = proc.stdout.strip()
    log("  %s (%.0f s)" % (out, time.time() - t0))
    return json.loads(out) if out.startswith("{") else None


def run_demo(cfg: DemoConfig, log=log):
    out = os.path.abspath(cfg.out)
    paths = {
        "pretrain": os.path.join(out, "pretrain"),
        "export": os.path.join(out, "export"),
        "deploy": os.path.join(out, "deploy", cfg.board),
        "scratch": os.path.join(out, "scratch"),
        "head_float": os.path.join(out, "heads", "float.npz"),
        "head_binary": os.path.join(out, "heads", "binary.npz"),
        "head_digits": os.path.join(out, "heads", "digits-float.npz"),
        "features": os.path.join(out, "features-cache"),
        "images": os.path.join(out, "image-cache"),
    }
    # --resume: a demo killed during a training stage continues that run instead of refusing its folder
    common = ["--seed", str(cfg.seed), "--workers", str(cfg.workers), "--resume"]
    t0 = time.time()

    log("== 1/5 train the binary backbone on %s (%s preset)" % (cfg.pretrain_dataset, cfg.preset))
    # --no-flip: a mirrored glyph is another glyph; the cache renders each image once, not every epoch
    pre = run_stage(["train", "fit", "--preset", cfg.preset, "--dataset", cfg.pretrain_dataset, "--epochs",
                     str(cfg.pretrain_epochs), "--no-flip", "--cache-dir", paths["images"],
                     "--out", paths["pretrain"]] + common
                    + _options(cfg.pretrain_options()), log)

    log("== 2/5 export the frozen backbone to QONNX and verify it bit for bit")
    run_stage(["export", "backbone", "--run", paths["pretrain"], "--out", paths["export"]], log)

    log("== 3/5 build the FINN accelerator for %s (estimates + emulator bundle; bitstream with Vivado)" % cfg.board)
    run_stage(["build_fpga", "--export", paths["export"], "--board", cfg.board, "--out", paths["deploy"]], log)

    log("== 4/5 on the host: features of synthetic-transfer, software heads (a) binary and (b) float; real digit "
        "scans, (b) float")
    results = {}
    for head in ("binary", "float"):
        hpath = paths["head_" + head]
        host_common = ["--bundle", paths["deploy"], "--dataset", "synthetic-transfer", "--backend", "emulator",
                       "--cache-dir", paths["features"]] + _options(cfg.transfer_options())
        run_stage(["host", "fit"] + host_common + ["--head", head, "--out", hpath, "--seed", str(cfg.seed)], log)
        results[head] = run_stage(["host", "eval"] + host_common + ["--head", hpath], log)
    # Real images: handwritten scans (scikit-learn's digits), none of them seen in pretraining.
    real_common = ["--bundle", paths["deploy"], "--dataset", "digits", "--backend", "emulator",
                   "--cache-dir", paths["features"]]
    run_stage(["host", "fit"] + real_common + ["--head", "float", "--out", paths["head_digits"], "--seed",
                                               str(cfg.seed)], log)
    results["digits"] = run_stage(["host", "eval"] + real_common + ["--head", paths["head_digits"]], log)

    log("== 5/5 baseline: the same binary network trained from scratch on synthetic-transfer")
    scratch = run_stage(["train", "fit", "--preset", cfg.preset, "--dataset", "synthetic-transfer", "--epochs",
                         str(cfg.scratch_epochs), "--head", "binary", "--out", paths["scratch"]] + common
                        + _options(cfg.transfer_options()), log)

    rows = [
        ("binary, trained from scratch", scratch["test_top1"], scratch["test_top5"]),
        ("(a) fine-tuned, binary last layer", results["binary"]["top1"], results["binary"]["top5"]),
        ("(b) fine-tuned, float last layer", results["float"]["top1"], results["float"]["top5"]),
        (DIGITS_ROW, results["digits"]["top1"], results["digits"]["top5"]),
    ]
    summary = {
        "config": asdict(cfg),
        "pretrain": {"test_top1": pre["test_top1"], "test_top5": pre["test_top5"]},
        "table": [{"row": r, "top1": t1, "top5": t5} for r, t1, t5 in rows],
        "images_per_s": results["float"].get("images_per_s"),
        "paths": paths,
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    write_bytes_atomic(os.path.join(out, "table.md"), (format_table(summary) + "\n").encode())
    log("artifacts:")
    for k in ("pretrain", "export", "deploy", "scratch", "head_float", "head_binary", "head_digits"):
        log("  %-12s %s" % (k, paths[k]))
    log("  %-12s %s" % ("plots", ", ".join([os.path.join(paths["pretrain"], "curves.png"),
                                           os.path.join(paths["deploy"], "report", "layers.png"),
                                           paths["head_float"].replace(".npz", ".confusion.png")])))
    log("  %-12s %s" % ("summary", os.path.join(out, "summary.json")))
    log("finished in %.0f s" % summary["seconds"])
    return summary


def format_table(summary):
    lines = [
        "synthetic-transfer (10 classes unseen in pretraining; backbone pretrained on %s: "
        "top-1 %.1f%%)" % (summary["config"]["pretrain_dataset"], 100 * summary["pretrain"]["test_top1"]),
        "",
        "| %-36s | %6s | %6s |" % ("", "top-1", "top-5"),
        "|%s|%s|%s|" % ("-" * 38, "-" * 8, "-" * 8),
    ]
    for row in summary["table"]:
        lines.append("| %-36s | %5.1f%% | %5.1f%% |" % (row["row"], 100 * row["top1"], 100 * row["top5"]))
    lines += ["", "The last row: the same frozen backbone on real images, scikit-learn's 1,797 handwritten digit scans "
              "(10 classes, 8 x 8 pixels, test: a third of each class)."]
    return "\n".join(lines)
