"""Every float option of every entry point refuses inf and nan at parse time, naming the option.

The options are read from the parsers themselves (subcommands included), so a new one is covered the
day it is added."""

import argparse
import importlib

import pytest

from host.errors import BnnError

STAGES = ("train", "export", "build_fpga", "host", "bench", "demo")


def _parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, prefix + (name,))


def float_options():
    found = []
    for stage in STAGES:
        parser = importlib.import_module(stage + ".__main__").build_parser()
        for prefix, p in _parsers(parser):
            for action in p._actions:
                if action.type is float and action.option_strings:
                    found.append((stage, prefix, action.option_strings[-1]))
    return found


FLOATS = float_options()


def test_every_stage_has_its_float_options_found():
    stages = {s for s, _, _ in FLOATS}
    assert {"build_fpga", "host", "train"} <= stages, FLOATS  # --clock-mhz, --lr, --weight-decay, ...
    assert ("build_fpga", (), "--clock-mhz") in FLOATS


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
@pytest.mark.parametrize("stage,prefix,option", FLOATS, ids=["%s %s %s" % (s, " ".join(p), o) for s, p, o in FLOATS])
def test_a_float_option_refuses_what_is_not_a_finite_number(stage, prefix, option, value):
    parser = importlib.import_module(stage + ".__main__").build_parser()
    with pytest.raises(BnnError) as e:
        parser.parse_args(list(prefix) + [option + "=" + value])
    assert "argument %s" % option in str(e.value) and "must be a finite number, got %r" % value in str(e.value)
