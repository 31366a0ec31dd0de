"""What every ``python -m <stage>`` entry point shares: one-line errors and option parsing."""

import sys

from .errors import BnnError


def run_cli(main, argv=None):
    """Run ``main(argv)``; a BnnError becomes "error: <message>" on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except BnnError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parse_value(v):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def dataset_options(pairs):
    """['n_train_per_class=100', 'flowers_split=official'] -> {'n_train_per_class': 100, ...}."""
    out = {}
    for p in pairs or ():
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise BnnError("--option %r: expected KEY=VALUE" % p)
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out
