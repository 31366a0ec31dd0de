"""What one ``python -m bench`` run was asked to do, shared by the measurement modules."""

import sys
from dataclasses import dataclass, field
from typing import List, Optional

from .networks import Networks


@dataclass
class Context:
    quick: bool
    workdir: str  # scratch space for exported graphs, FINN builds and feature files
    networks: Networks
    only: List[str] = field(default_factory=list)  # name prefixes; empty = everything
    with_paper_finn: bool = False
    demo_bundle: Optional[str] = None
    seed: int = 0
    threads: int = 1  # for every tool: numpy's BLAS (via the environment), torch, onnxruntime
    listing: Optional[set] = None  # when set: collect the names asked about, want none (no work runs)

    def wanted(self, name: str) -> bool:
        if self.listing is not None:
            self.listing.add(name)
            return False
        return not self.only or any(name.startswith(p) for p in self.only)

    def any_wanted(self, names) -> bool:
        return any(self.wanted(n) for n in names)

    @staticmethod
    def log(msg: str):
        print("bench: %s" % msg, file=sys.stderr, flush=True)
