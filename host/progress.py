"""Progress bars: tqdm when it is installed (optional on the board), nothing otherwise."""

import sys


def progress_bar(total=None, desc="", enabled=True, iterable=None, unit="it"):
    """A tqdm bar on stderr, or None (or the bare iterable) when disabled or tqdm is missing."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                       file=sys.stderr)
    if bar is None and iterable is not None:
        return iterable
    return bar
