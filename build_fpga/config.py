"""The build_fpga stage's one configuration: what the CLI sets, what FINN is asked to do."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional, Tuple

from bnn_transfer.host.errors import BnnError

from .boards import Board, board_names, get_board

# A field with this metadata shapes FINN's run: BuildConfig.finn_dict, recorded with every estimate
FINN = {"finn": True}


@dataclass
class BuildConfig:
    export: Optional[str] = None  # export directory (backbone.onnx + export.json); required by build()
    board: str = field(default="pynq-z2", metadata=FINN)  # pynq-z1, pynq-z2, ultra96, zcu104, kv260
    out: Optional[str] = None  # DEPLOY_DIR; required by build()
    # None (and no folding): the highest that fits within FINN's margins
    target_fps: Optional[int] = field(default=None, metadata=FINN)
    # FINN folding config JSON (e.g. a bundle's report/folding_config.json)
    folding: Optional[str] = field(default=None, metadata=FINN)
    clock_mhz: Optional[float] = field(default=None, metadata=FINN)  # default: the board's
    # FINN's default; caps SIMD * weight bits per PE in SetFolding (--target-fps only)
    mvau_wwidth_max: int = field(default=36, metadata=FINN)
    estimate_only: bool = False  # no synthesis even where Vivado is on PATH
    hw_codegen: bool = field(default=False, metadata=FINN)  # also generate the HLS C++/RTL sources (no Vivado needed)
    build_dir: Optional[str] = None  # FINN's working dir; default: a temp dir, or <out>.finn-build with hw_codegen
    verify_images: int = 4  # seeded random images for the bit-exactness ladder (0: none)
    # FINN's FIFO sizing strategy for the hardware build (preflight.FIFO_STRATEGIES)
    fifo: str = field(default="force_minimal_fifos", metadata=FINN)
    clean: bool = False  # start the hardware build over instead of resuming it
    cppsim: int = 0  # images through FINN's C++ simulation of the HLS layers (0: no cppsim rung)
    hls_include: Optional[str] = None  # open ap_types headers for cppsim where Vitis HLS is not installed
    board_repos: Tuple[str, ...] = ()  # more board-file folders for the pre-flight and Vivado's board.repoPaths
    accept_timing_violation: bool = False  # bundle a bitstream whose routed design misses its clock

    @property
    def target(self) -> Board:
        """The board this build is for: its name resolved here, the one place that does."""
        return get_board(self.board)

    def clock(self) -> float:
        """The clock FINN folds, estimates and synthesizes for: --clock-mhz, else the board's."""
        return float(self.clock_mhz or self.target.clock_mhz)

    def check(self) -> None:
        """One-line BnnError for a configuration no build can run with."""
        if self.board not in board_names():
            raise BnnError("unknown board %r (choose from %s)" % (self.board, ", ".join(board_names())))
        if self.target_fps is not None and self.target_fps < 1:
            raise BnnError("--target-fps %r: must be a positive number of images per second" % self.target_fps)
        if self.target_fps is not None and self.folding is not None:
            raise BnnError("--target-fps and --folding exclude each other: the folding file fixes the parallelism")
        if self.verify_images < 0:
            raise BnnError("--verify-images %r: must be 0 or more" % self.verify_images)
        if self.cppsim < 0:
            raise BnnError("--cppsim %r: must be 0 or more images" % self.cppsim)
        from .boards import MAX_CLOCK_MHZ, MIN_CLOCK_MHZ

        if self.clock_mhz is not None and not MIN_CLOCK_MHZ <= self.clock_mhz <= MAX_CLOCK_MHZ:
            raise BnnError("--clock-mhz %r: must be a frequency from %g to %g MHz (the PS's PL clock FINN's shell "
                           "uses)" % (self.clock_mhz, MIN_CLOCK_MHZ, MAX_CLOCK_MHZ))
        for repo in self.board_repos:
            if not os.path.isdir(repo):
                raise BnnError("--board-repo %s: not a folder (it should hold <board>/<version>/board.xml)" % repo)
            if any(c in repo for c in '{}"\\\n%$['):
                raise BnnError("--board-repo %r: a folder whose name has none of {}\"\\$[%% or newlines, please "
                               "(Vivado receives it in a Tcl script)" % repo)
        if self.mvau_wwidth_max < 1:
            raise BnnError("--mvau-wwidth-max %r: must be a positive number of bits" % self.mvau_wwidth_max)
        from .preflight import FIFO_STRATEGIES

        if self.fifo not in FIFO_STRATEGIES:
            raise BnnError("--fifo %r: choose one of %s" % (self.fifo, ", ".join(FIFO_STRATEGIES)))
        if self.export is None or self.out is None:
            raise BnnError("both an export directory (--export) and a deploy directory (--out) are needed")
        if not os.path.isdir(self.export):
            raise BnnError("%s: export directory not found (write it with 'python -m export backbone')" % self.export)

    def finn_dict(self) -> Dict:
        """The fields that shape FINN's run (recorded with every estimate)."""
        d = asdict(self)
        return {f.name: d[f.name] for f in fields(self) if f.metadata.get("finn")}
