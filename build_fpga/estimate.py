"""The estimate of one build as typed data: made once from FINN's reports (``estimates.parse_estimates``),
completed by the flow (DDR bound, run), the folding search and the build (how the folding was chosen),
and read by the report, the bundle and the bench.

``to_dict`` is the JSON written to ``report/estimates.json`` (and read back with ``from_dict``); both
walk the dataclass fields, so a new field is written and read without a second list of keys. A field
made with :func:`_optional` is left out of the JSON while it is None (what the older writers did by not
adding the key).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Type, TypeVar

R = TypeVar("R", bound="_Record")


def _optional(nested=None):
    return field(default=None, metadata={"omit_none": True, "nested": nested})


def _nested(cls):
    return field(metadata={"nested": cls})


class _Record:
    """``to_dict``/``from_dict`` of a dataclass, walking its fields (nested records, lists of them)."""

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            if isinstance(v, _Record):
                v = v.to_dict()
            elif isinstance(v, list):
                v = [x.to_dict() if isinstance(x, _Record) else copy.deepcopy(x) for x in v]
            else:
                v = copy.deepcopy(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: Type[R], data: Dict[str, Any]) -> R:
        """From the ``to_dict`` form; keys that are no field (estimates.json's ``fit``, ``notes``) are
        ignored, missing optional fields take their default."""
        kw = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            v, nested = data[f.name], f.metadata.get("nested")
            if nested is not None and v is not None:
                v = [nested.from_dict(x) for x in v] if isinstance(v, list) else nested.from_dict(v)
            kw[f.name] = v
        return cls(**kw)


@dataclass(frozen=True)
class Resource(_Record):
    """One resource of the board: what the design uses (None: not estimated, FF) against what there is."""

    used: Optional[int]
    available: int
    usable: int  # available x margin
    margin: float  # FINN's recommended share (finn.util.platforms.DEFAULT_RES_LIMITS)
    layers: Optional[int] = _optional()  # FINN's per-node estimates
    interconnect: Optional[int] = _optional()  # FIFOs, width converters, DMAs (estimates.interconnect)
    note: Optional[str] = _optional()

    @property
    def percent(self) -> Optional[float]:
        return None if self.used is None or not self.available else 100.0 * self.used / self.available

    @property
    def within_margin(self) -> Optional[bool]:
        return None if self.used is None else self.used <= self.usable

    @property
    def within_board(self) -> Optional[bool]:
        return None if self.used is None else self.used <= self.available

    def pct(self) -> str:
        """"41,000 (77.1%)" for log lines; "n/a" when not estimated."""
        if self.used is None:
            return "n/a"
        return "%s (%.1f%%)" % (format(self.used, ","), self.percent or 0)


@dataclass(frozen=True)
class LayerEstimate(_Record):
    """One node of FINN's dataflow graph: its cycles and resources (FINN's models) and folding."""

    node: str
    op_type: str
    layer: Optional[str]  # the backbone layer it serves (conv1..fc2), None without the final model
    cycles: int
    lut: int
    bram18: int
    uram: int
    dsp: int
    bram_efficiency: Optional[float]
    pe: Optional[int]
    simd: Optional[int]
    mw: Optional[int]
    mh: Optional[int]
    weight_bits: int
    macs: int
    note: Optional[str] = _optional()  # where a figure is ours rather than FINN's (MVAU_rtl)


@dataclass(frozen=True)
class FoldingSearch(_Record):
    """How the default folding search ended (``folding.py``)."""

    binding: str  # the resource over its margin ("lut", "bram18", ...), "ddr" or "parallelism"
    detail: str
    steps: int
    fps: float


@dataclass(frozen=True)
class Estimate(_Record):
    board: str
    finn_board: str
    part: str
    clock_mhz: float
    fps: float  # FINN's estimate: the clock over the cycles of the slowest node
    latency_cycles: int  # critical path
    max_cycles: int
    bottleneck: str  # the slowest node
    latency_ms: float
    # one field per resource, in boards.RESOURCES order (parse_estimates passes them by these names)
    lut: Resource = _nested(Resource)
    ff: Resource = _nested(Resource)
    bram18: Resource = _nested(Resource)
    uram: Resource = _nested(Resource)
    dsp: Resource = _nested(Resource)
    layers: List[LayerEstimate] = _nested(LayerEstimate)
    interconnect: List[Dict]  # rows of estimates.interconnect: FIFOs, width converters, DMAs
    weight_bits: int
    excludes: str  # what the fit check does not count
    fifo_strategy: Optional[str] = None  # the --fifo whose FIFOs the interconnect rows price (None: older files)
    # set by the flow (finn_flow._estimates): the DDR bound (external_weights.ddr_bound), the target
    # asked for (written even when None), the run's wall time, peak RSS and FINN config
    ddr: Optional[Dict] = _optional()
    target_fps: Optional[int] = None
    run: Optional[Dict] = _optional()
    folding_search: Optional[FoldingSearch] = _optional(FoldingSearch)  # set by folding.py's searches
    folding_mode: Optional[str] = _optional()  # how build.py chose the folding, for the report

    @property
    def resources(self) -> Dict[str, Resource]:
        return {name: getattr(self, name) for name in RESOURCE_FIELDS}

    @property
    def ddr_fps(self) -> Optional[float]:
        """The DDR bound on img/s; None when no weights stream from DDR (or before the flow set it)."""
        return None if self.ddr is None else self.ddr["fps"]

    @property
    def effective_fps(self) -> float:
        """The lower of FINN's estimate and the DDR bound."""
        return float(self.fps) if self.ddr_fps is None else min(float(self.fps), self.ddr_fps)

    def check_fit(self, margins: bool = True) -> List[str]:
        """Violations, one line each ("LUT 41,000 > 37,240 usable (70% of 53,200)"); empty when it fits.

        ``margins=False`` checks against 100% of the board (the hard limit for refusing a build).
        """
        bad = []
        for name, r in self.resources.items():
            limit = r.usable if margins else r.available
            if r.used is None or r.used <= limit:
                continue
            what = "usable (%d%% of %s)" % (round(r.margin * 100), format(r.available, ",")) if margins else "available"
            bad.append("%s %s > %s %s" % (name.upper(), format(r.used, ","), format(limit, ","), what))
        return bad

    def fit_refusal(self, out: str, mode: str) -> Optional[str]:
        """One line when the estimate exceeds 100% of a resource (the build is refused), else None.

        ``mode``: how the folding was chosen ("default" search, "fps" target, folding "file"), for the hint.
        """
        over = [(name, r) for name, r in self.resources.items() if r.within_board is False]
        if not over:
            return None
        name, r = over[0]
        pct = r.percent if r.available else float("inf")
        hint = {"default": "even FINN's smallest folding is too big: use a smaller preset or a larger board",
                "fps": "use a lower --target-fps or a smaller preset",
                "file": "lower PE/SIMD in the folding file, or use a smaller preset"}[mode]
        return ("%s: the design does not fit the %s at %.0f img/s: %s needs %s of %s (%.0f%%); %s"
                % (out, self.board, self.fps, name.upper(), format(r.used, ","), format(r.available, ","), pct,
                   hint))


RESOURCE_FIELDS = tuple(f.name for f in fields(Estimate) if f.metadata.get("nested") is Resource)
