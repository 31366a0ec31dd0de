"""Did the routed design meet its clock? Vivado's post-route timing summary, read with FINN's parser.

FINN's ``step_synthesize_bitfile`` copies Vivado's routed timing summary of the Zynq shell project
(``top_wrapper_timing_summary_routed.rpt``) to ``report/post_route_timing.rpt`` and goes on whatever it
says; a bitstream that misses its clock may compute wrong features on the board without any error.
The worst negative slack (WNS) is read with FINN's own parser (``finn.util.vivado``) and the clock the
design reaches is FINN's estimate from it, ``1000 / (period - WNS)`` MHz.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

from bnn_transfer.host.errors import BnnError

from .boards import MIN_CLOCK_MHZ

REPORT = "post_route_timing.rpt"


@dataclass(frozen=True)
class Timing:
    target_mhz: float
    wns_ns: float
    fmax_mhz: float  # the clock the routed design reaches
    report: str

    @property
    def met(self) -> bool:
        return self.wns_ns >= 0

    def to_dict(self) -> Dict:
        return dict(asdict(self), met=self.met)


def read_timing(report_dir, target_mhz: float) -> Timing:
    """The WNS of the routed design in ``report_dir/post_route_timing.rpt`` (BnnError if there is none)."""
    from finn.util.vivado import _parse_vivado_timing_report

    path = Path(report_dir) / REPORT
    if not path.is_file():
        raise BnnError("%s: FINN's hardware build left no post-route timing report, so the clock is unproven" % path)
    wns = _parse_vivado_timing_report(path).get("WNS")
    if wns is None or not math.isfinite(wns):
        raise BnnError("%s: no worst negative slack (WNS) in this Vivado timing summary" % path)
    period = 1000.0 / target_mhz
    return Timing(target_mhz=float(target_mhz), wns_ns=float(wns), fmax_mhz=round(1000.0 / (period - wns), 1),
                  report=str(path))


def retry_clock_mhz(timing: Timing) -> int:
    """A --clock-mhz the same design should meet: the reached clock rounded down to 5 MHz."""
    return max(int(MIN_CLOCK_MHZ), int(timing.fmax_mhz // 5 * 5))


def timing_refusal(timing: Timing, out: str, accept: bool) -> Optional[str]:
    """The one-line error for a design that misses its clock, unless ``accept`` (--accept-timing-violation)."""
    if timing.met or accept:
        return None
    return ("%s: the routed design misses its %g MHz clock (worst negative slack %.3f ns, about %.0f MHz reached; "
            "%s): rebuild with --clock-mhz %d, or bundle it anyway with --accept-timing-violation (it may compute "
            "wrong features on the board)" % (out, timing.target_mhz, timing.wns_ns, timing.fmax_mhz, timing.report,
                                              retry_clock_mhz(timing)))
