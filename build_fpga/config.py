"""The build_fpga stage's one configuration: what the CLI sets, what FINN is asked to do."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from host.errors import BnnError

from .boards import Board, board_names, get_board


@dataclass
class BuildConfig:
    export: Optional[str] = None  # export directory (backbone.onnx + export.json); required by build()
    board: str = "pynq-z2"  # pynq-z1, pynq-z2, ultra96, zcu104, kv260
    out: Optional[str] = None  # DEPLOY_DIR; required by build()
    target_fps: Optional[int] = None  # None (and no folding): the highest that fits within FINN's margins
    folding: Optional[str] = None  # FINN folding config JSON (e.g. a bundle's report/folding_config.json)
    clock_mhz: Optional[float] = None  # default: the board's
    mvau_wwidth_max: int = 36  # FINN's default; caps SIMD * weight bits per PE in SetFolding (--target-fps only)
    estimate_only: bool = False  # no synthesis even where Vivado is on PATH
    hw_codegen: bool = False  # also generate the HLS C++/RTL sources (no Vivado needed)
    build_dir: Optional[str] = None  # FINN's working dir; default: a temp dir, or <out>.finn-build with hw_codegen
    verify_images: int = 4  # seeded random images for the bit-exactness ladder (0: none)
    fifo: str = "force_minimal_fifos"  # FINN's FIFO sizing strategy for the hardware build (preflight.FIFO_STRATEGIES)
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
        for k in ("export", "out", "estimate_only", "build_dir", "verify_images", "clean", "cppsim", "hls_include",
                  "board_repos", "accept_timing_violation"):
            d.pop(k)
        return d
