"""The boards we build for: FINN's board name, part, clock and resource totals, read from FINN itself.

Each board is one record of ``host.boards.BOARDS`` (how to add one: its top); this module resolves it
with FINN's tables into the ``Board`` that ``BuildConfig.target`` hands every module of the build.

Sources (finn-plus 1.6.1):
- part: ``finn.util.basic.pynq_part_map[finn_board]`` (also what ``DataflowBuildConfig`` resolves
  ``board`` to via ``part_map``).
- resources ``[LUT, FF, BRAM_18K, URAM, DSP]``: ``finn.util.platforms.platforms[finn_board]()
  .compute_resources[0]``. FINN has no platform for ``KV260_SOM``; its numbers come from AMD's Kria
  K26 SOM data sheet (DS987): 117,120 CLB LUTs, 234,240 CLB flip-flops, 144 BRAM36 (= 288 BRAM18),
  64 URAM, 1,248 DSP slices.
- usable margins: ``finn.util.platforms.DEFAULT_RES_LIMITS`` = ``[0.7, 0.5, 0.80, 0.80, 0.80]`` for
  LUT, FF, BRAM_18K, URAM, DSP ("recommended resource limits from Xilinx for timing closure").
- clock (the default of ``--clock-mhz``; FINN clocks the whole design from the PS's first PL clock at
  the ``synth_clk_period_ns`` it is given): 100 MHz on the Zynq-7000 boards (FINN's default
  ``synth_clk_period_ns = 10.0``, BNN-PYNQ's and finn-examples' Pynq-Z1/Z2 clock for larger designs);
  150 MHz on the Zynq UltraScale+ boards, below what finn-examples builds there: bnn-pynq for Ultra96
  and ZCU104 at ``synth_clk_period_ns=5.0`` (200 MHz; finn-examples commit 44c569e, April 2024),
  mobilenet-v1 on ZCU104 at 5.4 ns, espcn on KV260 at 5.0 ns (dev branch). A precedent is not a
  proof: only Vivado's timing report after routing proves a clock (``build_fpga/timing.py``).
- highest ``--clock-mhz``: 250 MHz, the Zynq-7000 PS's FCLK maximum (AMD DS187); the same cap on
  Zynq UltraScale+ (above every finn-examples build there), where the PL clock FINN uses comes from
  the PS too.
- shell flow: ``ShellFlowType.VIVADO_ZYNQ`` (``"vivado_zynq"``) for all five; the driver platform
  FINN derives from it is ``"zynq-iodma"``.

FINN's tables differ slightly from the data sheets for the UltraScale+ parts (ZU3EG: FINN 71,000 LUT /
412 BRAM18 vs 70,560 / 432; ZU7EV: 230,000 LUT / 610 BRAM18 / 92 URAM vs 230,400 / 624 / 96); we use
FINN's, as its estimates and partitioner do. ``ultra96`` means the Ultra96-V2 (``-i`` part), the
board PYNQ ships images for; FINN's platform table only knows "Ultra96" (same ZU3EG die).

DDR (for weights streamed from DRAM, build_fpga/external_weights.py): ``axi_port_bits`` is FINN's
``finn.util.basic.pynq_native_port_width`` (the width of the IODMAs and of the one PS port its Zynq
shell connects them to); ``ddr_bytes_per_s`` is the PS DDR's peak (bus width x transfer rate):
- kv260: 64-bit DDR4 at 2400 Mb/s (AMD DS987, K26 SOM data sheet) = 19.2 GB/s.
- zcu104: 64-bit PS DDR4 component (AMD UG1267; PYNQ's board page) at 2400 Mb/s, the Zynq
  UltraScale+ PS's DDR4 maximum (AMD DS925) = 19.2 GB/s.
- pynq-z1, pynq-z2: 16-bit DDR3 at 1050 Mb/s (Digilent PYNQ-Z1 reference manual, TUL PYNQ-Z2
  user manual) = 2.1 GB/s.
- ultra96: 32-bit LPDDR4 (Avnet Ultra96-V2 hardware user guide); no transfer rate stated here
  (None): only the shell's port bounds it.
At FINN's 100 MHz the shell's port (64 bits: 0.8 GB/s, 128 bits: 1.6 GB/s) is the tighter limit on
every board.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Dict, Optional

from bnn_transfer.host.boards import BOARDS
from bnn_transfer.host.errors import BnnError

RESOURCES = ("lut", "ff", "bram18", "uram", "dsp")
MIN_CLOCK_MHZ, MAX_CLOCK_MHZ = 10.0, 250.0


@dataclass(frozen=True)
class Board:
    name: str  # ours: pynq-z1, pynq-z2, ultra96, zcu104, kv260
    finn_board: str  # DataflowBuildConfig.board / ZynqBuild platform
    part: str
    clock_mhz: float
    shell_flow: str  # DataflowBuildConfig.shell_flow_type value
    lut: int
    ff: int
    bram18: int
    uram: int
    dsp: int
    margins: Dict[str, float]  # fraction of each resource FINN recommends using
    source: str  # where the resource totals come from
    axi_port_bits: int  # FINN's IODMA / shell port width (pynq_native_port_width)
    ddr_bytes_per_s: Optional[float]  # peak PS DDR bandwidth; None: not stated (the port bounds it)
    ddr_source: str

    @property
    def totals(self) -> Dict[str, int]:
        return {r: getattr(self, r) for r in RESOURCES}

    @property
    def usable(self) -> Dict[str, int]:
        """Totals times FINN's margins, floored (e.g. pynq-z2: 37,240 LUT, 224 BRAM18)."""
        return {r: int(getattr(self, r) * self.margins[r] + 1e-9) for r in RESOURCES}

    @property
    def synth_clk_period_ns(self) -> float:
        return 1000.0 / self.clock_mhz

    def to_dict(self):
        d = asdict(self)
        d["usable"] = self.usable
        return d


def finn_margins() -> Dict[str, float]:
    from finn.util.platforms import DEFAULT_RES_LIMITS

    return {r: float(v) for r, v in zip(RESOURCES, DEFAULT_RES_LIMITS)}


@functools.lru_cache(maxsize=None)
def get_board(name: str) -> Board:
    """The board ``name`` of host's registry (``host.boards.BOARDS``) with FINN's part, port and resources."""
    try:
        record = BOARDS[name]
    except KeyError:
        raise BnnError("unknown board %r (choose from %s)" % (name, ", ".join(BOARDS))) from None
    from finn.builder.build_dataflow_config import ShellFlowType
    from finn.util.basic import pynq_native_port_width, pynq_part_map
    from finn.util.platforms import platforms

    if record.finn_platform is not None:
        res = tuple(int(v) for v in platforms[record.finn_platform]().compute_resources[0])
        source = "finn.util.platforms.platforms[%r]" % record.finn_platform
    else:
        res = record.resources
        source = "%s; FINN has no platform entry for %s" % (record.resources_source, record.finn_board)
    return Board(
        name=name,
        finn_board=record.finn_board,
        part=pynq_part_map[record.finn_board],
        clock_mhz=record.clock_mhz,
        shell_flow=ShellFlowType.VIVADO_ZYNQ.value,
        lut=res[0],
        ff=res[1],
        bram18=res[2],
        uram=res[3],
        dsp=res[4],
        margins=finn_margins(),
        source=source,
        axi_port_bits=int(pynq_native_port_width[record.finn_board]),
        ddr_bytes_per_s=record.ddr_bytes_per_s,
        ddr_source=record.ddr_source,
    )


def board_names():
    return tuple(BOARDS)
