"""Progress on stderr: status lines (``log``) and tqdm bars when tqdm is installed (optional on the board).

stdout carries a command's results only (its JSON line, a table), so that a caller can read them;
everything a person watches goes to stderr.
"""

import sys
from typing import Any, Iterable, Optional

# Seconds between two updates of a bar written to a file or a pipe rather than a terminal: there,
# every update is a new line, and a log of a long run would otherwise hold thousands of them.
NON_TTY_INTERVAL_S = 30.0


def log(msg: str) -> None:
    """One status line on stderr, flushed (it must interleave correctly with the bars)."""
    print(msg, file=sys.stderr, flush=True)


def progress_bar(total: Optional[int] = None, desc: str = "", enabled: bool = True,
                 iterable: Optional[Iterable[Any]] = None, unit: str = "it") -> Any:
    """A tqdm bar on stderr, or None (or the bare iterable) when disabled or tqdm is missing."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
            bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.1 if tty else NON_TTY_INTERVAL_S)
    if bar is None and iterable is not None:
        return iterable
    return bar
