"""The bundle's report/: estimates.json, README.md, layers.png, folding_config.json, bitexact.json,
and FINN's raw reports under finn/.

``estimates.json`` holds at top level ``board``, ``part``, ``clock_mhz``, ``fps`` (FINN's estimate:
clock / cycles of the slowest node), ``latency_cycles`` (critical path), and ``lut``, ``ff``,
``bram18``, ``dsp``, ``uram`` as ``{"used", "available", ...}``, per-node rows under ``layers``, and
``notes``. FINN's analytical models have no flip-flop estimate, so ``ff.used`` is null (said in
``notes``) rather than a number we would have to invent.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional

from bnn_transfer.host.atomic import write_json_atomic
from bnn_transfer.host.manifest import read_json
from bnn_transfer.host.report import PNG_METADATA

from .estimate import Estimate
from .estimates import RESOURCE_KEYS

_LABEL = {"lut": "LUT", "ff": "FF", "bram18": "BRAM18", "uram": "URAM", "dsp": "DSP"}
# FINN's reports worth keeping (the intermediate models are not: 100+ MB for z2).
FINN_REPORTS = (".json", ".rpt", ".log", ".txt")


def estimates_json(est: Estimate, bitexact: Dict) -> Dict:
    out = est.to_dict()
    out["fit"] = {name: {"percent": r.percent, "within_margin": r.within_margin, "within_board": r.within_board}
                  for name, r in est.resources.items()}
    notes = [
        "ff.used is null: FINN's analytical resource models have no flip-flop estimate (only Vivado's HLS "
        "and synthesis reports do); no number is invented here",
        "used counts the layers and the FIFOs, data-width converters and DMAs the hardware build adds "
        "(interconnect rows; FIFOs as the --fifo strategy builds them, DMA cost by our rule, "
        "build_fpga/estimates.py); it excludes "
        + est.excludes,
        "fps is the clock divided by the cycles of the slowest node (%s: %s cycles)" % (
            est.bottleneck, format(est.max_cycles, ",")),
    ]
    for name, r in est.resources.items():
        if r.within_margin is False:
            notes.append("%s %.1f%% exceeds FINN's recommended %d%% (timing closure may fail)" % (
                _LABEL[name], r.percent, round(r.margin * 100)))
    out["notes"] = notes
    out["bitexact"] = {k: v.get("mismatched_bits") for k, v in bitexact.get("stages", {}).items()}
    out["run"] = {"wall_s": (est.run or {}).get("wall_s")}  # the rest of the run (peak RSS, config) varies
    return out


def write_report(report_dir: str, est: Estimate, finn_dir: str, *, board, export: Dict, bitexact: Dict,
                 folding_file: str, hardware: bool) -> Dict:
    """Write report/ into a fresh directory; returns the estimates.json content."""
    os.makedirs(report_dir)
    finn_out = os.path.join(report_dir, "finn")
    os.makedirs(finn_out)
    src = os.path.join(finn_dir, "report")
    for name in sorted(os.listdir(src)):
        if name.endswith(FINN_REPORTS) and os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(finn_out, name))
    log = os.path.join(finn_dir, "build_dataflow.log")
    if os.path.isfile(log):
        shutil.copyfile(log, os.path.join(finn_out, "build_dataflow.log"))
    shutil.copyfile(folding_file, os.path.join(report_dir, "folding_config.json"))
    data = estimates_json(est, bitexact)
    write_json_atomic(os.path.join(report_dir, "estimates.json"), data)
    write_json_atomic(os.path.join(report_dir, "bitexact.json"), bitexact)
    plot_layers(est, os.path.join(report_dir, "layers.png"))
    text = readme(est, board=board, export=export, bitexact=bitexact, hardware=hardware)
    with open(os.path.join(report_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return data


# ------------------------------------------------------------------------------------- tables


def _n(v) -> str:
    return "n/a" if v is None else format(int(round(v)), ",")


def _p(v) -> str:
    return "n/a" if v is None else "%.1f%%" % v


def fit_table(est: Estimate) -> List[str]:
    lines = ["| resource | used | available | of the board | FINN margin | usable | fits |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in est.resources.items():
        if r.used is None:
            fits = "not estimated by FINN"
        elif not r.within_board:
            fits = "**no: over 100%**"
        elif not r.within_margin:
            fits = "over the margin"
        else:
            fits = "yes"
        lines.append("| %s | %s | %s | %s | %d%% | %s | %s |" % (
            _LABEL[name], _n(r.used), _n(r.available), _p(r.percent), round(r.margin * 100), _n(r.usable), fits))
    return lines


def layer_table(est: Estimate) -> List[str]:
    lines = ["| layer | FINN node | PE | SIMD | cycles | LUT | BRAM18 | URAM | DSP | weight bits |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ly in est.layers:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            ly.layer or "", ly.node, ly.pe or "", ly.simd or "", _n(ly.cycles), _n(ly.lut), _n(ly.bram18),
            _n(ly.uram), _n(ly.dsp), _n(ly.weight_bits) if ly.weight_bits else ""))
    return lines


def parts_table(est: Estimate) -> List[str]:
    """Layers, then what the hardware build adds (FIFOs, width converters, DMAs), then the total."""
    kinds = (("fifo", "FIFOs"), ("dwc", "data-width converters"), ("iodma", "IODMAs (our allowance)"))
    lines = ["| part | count | LUT | BRAM18 | URAM | DSP |", "|---|---:|---:|---:|---:|---:|"]
    res = est.resources
    rows = [("layers (FINN's estimates)", len(est.layers), {r: res[r].layers for r in RESOURCE_KEYS})]
    for kind, label in kinds:
        items = [x for x in est.interconnect if x["kind"] == kind]
        rows.append((label, len(items), {r: sum(x[r] for x in items) for r in RESOURCE_KEYS}))
    rows.append(("**total (fit check)**", "", {r: res[r].used for r in RESOURCE_KEYS}))
    for label, count, res in rows:
        lines.append("| %s | %s | %s | %s | %s | %s |" % (label, count, _n(res["lut"]), _n(res["bram18"]),
                                                      _n(res["uram"]), _n(res["dsp"])))
    return lines


def fifo_note(strategy: Optional[str]) -> str:
    """What the FIFO rows price, by the FIFO strategy the estimate was made for (``--fifo``)."""
    if strategy == "distributed_sim":
        return ("FIFO depths: `--fifo distributed_sim` sizes them by simulation in the hardware build; here each "
                "holds one feature-map row of its stream (our allowance), in its cheapest storage.")
    if strategy is None:
        return "FIFO depths: not recorded (an estimate written before the FIFO strategy was)."
    return ("FIFOs as `--fifo force_minimal_fifos` builds them: FINN's minimal depth (2) on every stream, a shift "
            "register. FINN's img/s assumes every layer keeps its pace; FIFOs this shallow may not hold it where "
            "a layer emits in bursts (`--fifo distributed_sim` sizes them by simulation).")


def tradeoff(est: Estimate, export: Dict, board) -> List[str]:
    """Accuracy vs fps vs resources for this preset on this board, from what the build knows."""
    spec = export.get("preset_spec", {})
    size = export["preprocess"]["input_size"]
    mbit = est.weight_bits / 1e6
    lines = ["## Trade-off: accuracy, throughput, resources", ""]
    lines.append("Preset `%s`: %dx%d input, convs %s, FC %s, %.2f Mbit of stored weights; %s features." % (
        export["preset"], size, size, "-".join(str(c["out_channels"]) for c in spec.get("convs", [])) or "?",
        "-".join(str(f["out_features"]) for f in spec.get("fcs", [])) or "?", mbit, export["feature_width"]))
    acc = _pretrain_accuracy(export)
    lines.append("")
    lines.append(acc if acc else "Accuracy: not recorded with this export (see the training run's run.json; "
                 "`python -m train table2` makes the paper's Table 2 comparison).")
    search = est.folding_search
    if search is not None:
        lines += ["", "Throughput vs resources on the %s: the folding search (most img/s within FINN's margins on "
                  "every resource, FIFOs, width converters and DMAs counted) reached %s img/s; it stopped because "
                  "%s. %s binds." % (board.name, _n(est.fps), search.detail,
                                     "Parallelism" if search.binding == "parallelism" else
                                     _LABEL.get(search.binding, search.binding))]
    lines.append("Accuracy does not change with the folding (the host head runs in software either way): only "
                 "the preset (input size, widths) moves accuracy, at the cost of LUTs and of BRAM for fc1's "
                 "weights.")
    if export["preset"] == "tiny":
        lines.append("`tiny` (32 px) is the tests' preset: cheapest in hardware, lowest accuracy (its 128-bit conv5 "
                     "keeps too little for real images); `small` is the demo's, `z2` (112 px) the one sized for a "
                     "Pynq-Z2 at >= 1,000 img/s.")
    elif export["preset"] == "small":
        lines.append("`small` (32 px) is the demo's preset: `tiny`'s convs, but conv5 keeps a 3 x 3 map and the FC "
                     "layers are 1,024 wide, so that the frozen features transfer to real scans (bench "
                     "`transfer/digits`); fc1 and fc2 hold most of its weights and BRAM.")
    elif export["preset"] == "z2":
        lines.append("`z2` keeps AlexNet's 5 conv + 2 FC structure at 112 px; a stride-2 conv1 keeps fc1's "
                     "weights (the BRAM driver) small. More input pixels or wider FC layers would raise accuracy "
                     "but fc1's weights then outgrow the xc7z020's 280 BRAM18.")
    return lines


def _pretrain_accuracy(export: Dict) -> Optional[str]:
    run = export.get("inputs", {}).get("run_manifest", {}).get("path")
    if not run or not os.path.isfile(run):
        return None
    try:
        m = read_json(run)
        final = m.get("final", {})
        if "test_top1" not in final:
            return None
        return "Accuracy of the pretrained network (before the cut, from its run.json): top-1 %.1f%% on %s." % (
            100 * final["test_top1"], m.get("params", {}).get("dataset", "its test split"))
    except Exception:  # a report line is not worth failing the build for
        return None


def weight_memory(est: Estimate) -> List[str]:
    """Where the weights live, and the DDR bound on img/s when some stream from DDR."""
    ddr = est.ddr
    if est.ddr_fps is None:
        return ["Weights: all on chip (no layer streams its weights from DDR)."]
    peak = ("; the DDR's own peak is %.1f GB/s (%s)" % (ddr["ddr_bytes_per_s"] / 1e9, ddr["ddr_source"])
            if ddr["ddr_bytes_per_s"] else "; %s" % ddr["ddr_source"])
    return [
        "Weights: **%s stream from DDR** (FINN `mem_mode` external, one weight IODMA each, replayed per image; "
        "`runtime_weights/` in the bundle), the other layers' weights are on chip (`external_weights_plan.json`)."
        % ", ".join(ddr["streamed_layers"]),
        "",
        "| bound | img/s | from |",
        "|---|---|---|",
        "| compute (FINN's estimate) | %s | slowest node %s |" % (_n(est.fps), est.bottleneck),
        "| DDR | %s | %s bytes of weights + %s bytes of image and features per image over %s = %.2f GB/s%s |" % (
            _n(ddr["fps"]), _n(ddr["weight_bytes_per_image"]), _n(ddr["io_bytes_per_image"]), ddr["port"],
            ddr["bytes_per_s"] / 1e9, peak),
        "",
        "Expected throughput: the lower of the two, **%s img/s**." % _n(est.effective_fps),
    ]


def readme(est: Estimate, *, board, export: Dict, bitexact: Dict, hardware: bool) -> str:
    fold = est.folding_mode or ""
    lines = [
        "# FINN estimates: `%s` preset on %s (%s, %s MHz)" % (export["preset"], board.name, board.part,
                                                               format(est.clock_mhz, "g")),
        "",
        "- estimated throughput: **%s img/s** (slowest node %s: %s cycles per image)" % (
            _n(est.fps), est.bottleneck, _n(est.max_cycles)),
        "- latency: %s cycles (%.2f ms)" % (_n(est.latency_cycles), est.latency_ms),
        "- folding: %s; `folding_config.json` is FINN's folding config of this build: edit PE/SIMD and pass it "
        "back with `--folding`" % fold,
        "- %s" % ("synthesized with Vivado: see `finn/post_synth_resources.json` for measured resources"
                  if hardware else "not synthesized (no Vivado): all numbers are FINN's analytical estimates"),
        "",
        "## Fit on the %s" % board.name,
        "",
    ]
    lines += fit_table(est)
    lines += [""] + weight_memory(est)
    lines += ["", "FINN's margins are `finn.util.platforms.DEFAULT_RES_LIMITS` (Xilinx's recommended limits for "
              "timing closure). FF: FINN has no flip-flop estimate. Counted: the layers and what the hardware "
              "build adds around them (below); not counted: %s." % est.excludes, ""]
    lines += ["## Layers, FIFOs, width converters, DMAs", ""]
    lines += parts_table(est)
    lines += ["", "FIFO and width-converter costs are FINN's own models on the nodes FINN's InsertDWC/InsertFIFO/"
              "InsertIODMA insert; the IODMA cost is our allowance (FINN has no model), `build_fpga/estimates.py`. "
              + fifo_note(est.fifo_strategy), ""]
    lines += ["## Per layer", "", "![per-layer cycles and resources](layers.png)", ""]
    lines += layer_table(est)
    lines += [""] + tradeoff(est, export, board)
    stages = {k: v for k, v in bitexact.get("stages", {}).items() if k != "cppsim"}
    lines += ["", "## Bit-exactness", ""]
    if stages:
        lines.append("On %d seeded random images, every layer's output equals the torch integer backbone in: %s "
                     "(`bitexact.json`). The QONNX graph was checked by the export (%s)." % (
                         bitexact["images"], ", ".join(stages), json.dumps(bitexact.get("qonnx_at_export"))))
    else:
        lines.append("Skipped (`--verify-images 0`); the emulator weights were still checked against the torch "
                     "backbone's integers.")
    if "cppsim" in bitexact.get("stages", {}):
        lines += [""] + cppsim_section(bitexact["stages"]["cppsim"])
    return "\n".join(lines) + "\n"


def cppsim_section(rung: Dict) -> List[str]:
    """The C++ simulation rung: what ran as generated HLS C++, what ran in python and why."""
    ok = rung["first_divergence"] is None and rung["mismatched_bits"] == 0
    verdict = ("every layer equals the emulator and FINN's python execution bit for bit" if ok else
               "**differs**, first at layer %s (%d of %d feature bits)" % (
                   rung["first_divergence"], rung["mismatched_bits"], rung["bits"]))
    lines = ["### FINN HW graph, C++ (cppsim)", "",
             "FINN's generated HLS C++ (finn-hlslib, this build's weights and thresholds) compiled with g++ and run "
             "on %d seeded images: %s. Code generation and g++: %.0f s wall, %.0f s CPU (%d layers compiled now, "
             "%d jobs); simulation: %.0f s wall, %.0f s CPU; %s CPUs, 1-min load %s at the start." % (
                 rung["images"], verdict, rung["seconds"]["compile"], rung["cpu_seconds"]["compile"],
                 len(rung["compiled_now"]), rung["gxx_jobs"], rung["seconds"]["simulate"],
                 rung["cpu_seconds"]["simulate"], rung["cpus"], rung["load_avg_1min_at_start"]),
             "", "| FINN node | runs as | why |", "|---|---|---|"]
    lines += ["| %s | C++ (g++) | |" % n for n in rung["layers_compiled"]]
    lines += ["| %s | python | %s |" % (n, why.replace("|", "/")) for n, why in rung["layers_python"].items()]
    return lines


# ---------------------------------------------------------------------------------------- chart


def _per_layer(est: Estimate) -> List[Dict]:
    """Per backbone layer (conv1..fc2): cycles of its slowest node, summed LUT and BRAM18."""
    order, acc = [], {}
    for ly in est.layers:
        key = ly.layer or ly.node
        if key not in acc:
            order.append(key)
            acc[key] = {"layer": key, "cycles": 0, "lut": 0, "bram18": 0}
        a = acc[key]
        a["cycles"] = max(a["cycles"], ly.cycles)
        a["lut"] += ly.lut
        a["bram18"] += ly.bram18
    return [acc[k] for k in order]


def plot_layers(est: Estimate, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _per_layer(est)
    names = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
    panels = [("cycles", "cycles per image (slowest node)", est.max_cycles),
              ("lut", "LUT", None), ("bram18", "BRAM18", None)]
    for ax, (key, title, line) in zip(axes, panels):
        vals = [r[key] for r in rows]
        ax.barh(names, vals, color="#4c72b0" if key == "cycles" else "#dd8452")
        ax.set_title(title, fontsize=10)
        if line:
            ax.axvline(line, color="k", lw=0.8, ls="--")
        for y, v in enumerate(vals):
            ax.text(v, y, " " + format(v, ","), va="center", fontsize=7)
        ax.margins(x=0.25)
    axes[0].invert_yaxis()  # shared y axis: conv1 on top, in dataflow order
    fig.suptitle("%s: %s img/s, LUT %s, BRAM18 %s (FINN estimates, dashed: slowest node)" % (
        est.board, _n(est.fps), _n(est.lut.used), _n(est.bram18.used)), fontsize=11)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    os.replace(tmp, path)
