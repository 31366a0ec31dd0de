"""The with-Vivado path: FINN's hardware steps (HLS IP, stitched IP, Zynq shell, synthesis, bitstream,
PYNQ driver) continued from the folded, verified graph our estimate flow left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from .boards import get_board
from .config import BuildConfig
from .finn_env import finn_session
from .finn_flow import FlowError, dataflow_config, run_dataflow
from .steps import flow_steps

# What FINN's Zynq flow produces after the estimates: IP, stitched design, bitstream, PYNQ driver.
HARDWARE_OUTPUTS = ("ESTIMATE_REPORTS", "STITCHED_IP", "BITFILE", "PYNQ_DRIVER")


def hardware_steps() -> List[str]:
    """FINN's default build steps after the estimate reports (step_generate_hardware does HW codegen,
    HLS IP generation and FIFO sizing; then stitched IP, ZynqBuild synthesis + bitstream, driver)."""
    from finn.builder.build_dataflow_config import default_build_dataflow_steps as steps

    return list(steps[steps.index("step_generate_estimate_reports") + 1 :])


def run_hardware(out_dir, cfg: BuildConfig, build_dir=None) -> Dict:
    """Continue a finished :func:`run_flow`/:func:`refold` output dir through synthesis (needs Vivado).

    Resumes with FINN's ``start_step`` from the model our estimate steps left
    (``intermediate_models/step_bnn_io_shapes.onnx``: folded, bit-width-minimized dataflow child), so
    the hardware is exactly what was estimated and verified. Returns the paths of the ``.bit``,
    ``.hwh`` and driver directory, and the ``io_shape_dict`` of FINN's ``driver/settings.json``.
    """
    out_dir = Path(out_dir).resolve()
    board = get_board(cfg.board)
    if not (out_dir / "intermediate_models" / "step_bnn_io_shapes.onnx").exists():
        raise FlowError("%s: no finished estimate build to continue from" % out_dir)
    hw = hardware_steps()
    steps = flow_steps(hw_codegen=False) + hw
    dcfg = dataflow_config(out_dir, cfg, board, steps=steps, start_step=hw[0], outputs=HARDWARE_OUTPUTS)
    with finn_session(build_dir or out_dir / "finn_build"):
        wall = run_dataflow("", out_dir, dcfg)
    bit, hwh = out_dir / "bitfile" / "finn-accel.bit", out_dir / "bitfile" / "finn-accel.hwh"
    settings = out_dir / "driver" / "settings.json"
    for p in (bit, hwh, settings):
        if not p.exists():
            raise FlowError("%s: FINN's hardware build finished without %s" % (out_dir, p.name))
    info = json.loads(settings.read_text())["driver_information"]
    return {"bitfile": bit, "hwh": hwh, "driver_dir": out_dir / "driver", "io": info["io_shape_dict"],
            "wall_s": round(wall, 1)}
