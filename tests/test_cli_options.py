"""The options of every entry point: each float option refuses inf and nan at parse time, naming the
option; each option has help that shows its default; one option name means one thing in every
parser (issue 27); an old spelling of a renamed option is refused with a line naming the new one.

The options are read from the parsers themselves (subcommands included), so a new one is covered the
day it is added."""

import argparse
import importlib

import pytest

from bnn_transfer.host.cli import run_cli
from bnn_transfer.host.errors import BnnError

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
        parser = importlib.import_module("bnn_transfer." + stage + ".__main__").build_parser()
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
    parser = importlib.import_module("bnn_transfer." + stage + ".__main__").build_parser()
    with pytest.raises(BnnError) as e:
        parser.parse_args(list(prefix) + [option + "=" + value])
    assert "argument %s" % option in str(e.value) and "must be a finite number, got %r" % value in str(e.value)


# What each option name means, for every name more than one parser has: every parser's help of it says
# the phrase (lower case), and all of them take the same kind of value. A name newly shared by two
# parsers fails until it is added here, or renamed in one of them.
MEANINGS = {
    "--backend": "where features are computed",
    "--batch-size": "images per torch step",
    "--board": "board",
    "--bundle": "deploy bundle",
    "--camera": "camera",
    "--cut": "first layer",
    "--data-dir": "dataset root",
    "--dataset": "dataset",
    "--debug": "traceback",
    "--device": "torch device",
    "--epochs": "epochs",
    "--extract-batch-size": "images per backend call",
    "--feature-cache": "feature cache folder",
    "--folder": "image files",
    "--head": "head file",
    "--head-type": "type of the last layer",
    "--image-cache": "decoded-image cache folder",
    "--lr": "learning rate",
    "--no-amp": "mixed precision",
    "--no-cache": "feature cache",
    "--no-flip": "mirroring",
    "--option": "dataset option",
    "--out": "to write",
    "--preset": "preset",
    "--pretrain-epochs": "epochs of the",
    "--quick": "small",
    "--quiet": "no progress bars",
    "--resume": "last checkpoint",
    "--run": "run directory",
    "--scratch-epochs": "from-scratch",
    "--seed": "seed",
    "--table": "readable",
    "--threads": "threads",
    "--timeout": "seconds one batch may take",
    "--top": "classes per",
    "--val-fraction": "fraction of each class",
    "--verify-images": "bit for bit",
    "--weight-decay": "l2 penalty",
    "--workers": "image decoding",
}


@pytest.fixture
def parsers(monkeypatch):
    """(where, parser) of every parser of every stage; host's --board default must not come from the machine."""
    monkeypatch.delenv("BOARD", raising=False)
    return [(" ".join(("python -m " + stage,) + prefix), p) for stage in STAGES
            for prefix, p in _parsers(importlib.import_module("bnn_transfer." + stage + ".__main__").build_parser())]


def _options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _shown_help(parser, action):
    """The help line of ``action`` as --help prints it (defaults filled in), lower case, on one line."""
    if not action.help:
        return ""
    return " ".join(parser._get_formatter()._expand_help(action).split()).lower()


def test_every_option_has_help_that_shows_its_default(parsers):
    bad = []
    for where, p in parsers:
        for a in _options(p):
            name = "%s %s" % (where, a.option_strings[-1])
            if not a.help or a.help == argparse.SUPPRESS:
                bad.append("%s: no help" % name)
                continue
            if a.nargs == 0 or a.required:  # a flag, or an option without a default
                continue
            shown = _shown_help(p, a)
            d = a.default
            if "default" not in shown:
                bad.append("%s: help does not show the default (%r)" % (name, d))
            elif isinstance(d, (int, float, str)) and not isinstance(d, bool) and str(d).lower() not in shown \
                    and not (isinstance(d, float) and "%g" % d in shown):
                bad.append("%s: help shows a default other than %r: %s" % (name, d, shown))
    assert not bad, "\n".join(bad)


def test_every_help_has_a_description_and_lists_debug(parsers):
    for where, p in parsers:
        assert p.description, "%s --help: no description" % where
        assert "--debug" in p.format_help(), "%s --help does not list --debug" % where


def test_one_option_name_has_one_meaning(parsers):
    uses = {}
    for where, p in parsers:
        for a in _options(p):
            for o in a.option_strings:
                uses.setdefault(o, []).append((where, p, a))
    bad = []
    for o, used in sorted(uses.items()):
        if len(used) < 2:
            if o in MEANINGS:
                bad.append("%s: in one parser only (%s): drop it from MEANINGS" % (o, used[0][0]))
            continue
        if o not in MEANINGS:
            bad.append("%s: in %s: add its meaning to MEANINGS, or rename it where it means something else"
                       % (o, ", ".join(w for w, _, _ in used)))
            continue
        for where, p, a in used:
            if MEANINGS[o] not in _shown_help(p, a):
                bad.append("%s %s: its help does not say %r (another meaning?): %s"
                           % (where, o, MEANINGS[o], _shown_help(p, a)))
        kinds = {(type(a).__name__, a.nargs, a.type if a.type in (int, float) else "text") for _, _, a in used}
        if len(kinds) > 1:
            bad.append("%s: takes different kinds of values: %s" % (o, sorted(map(str, kinds))))
        choices = [set(a.choices) for _, _, a in used if a.choices]
        if choices and not set.intersection(*choices):
            bad.append("%s: choices that share nothing: %s" % (o, choices))
    assert not bad, "\n".join(bad)


def test_a_renamed_option_is_refused_naming_its_new_spelling(parsers):
    renamed = [(where, p, old, new) for where, p in parsers for old, new in p.renamed.items()]
    assert {(w, old) for w, _, old, _ in renamed} >= {("python -m train finetune", "--from"),
                                                       ("python -m host fit", "--head")}
    for where, p, old, new in renamed:
        names = {o for a in _options(p) for o in a.option_strings}
        assert new.split()[0] in names and old not in names, (where, old, new)  # "--solver-option lr=..."
        for argv in ([old, "x"], [old + "=x"]):
            with pytest.raises(BnnError) as e:
                p.parse_args(argv)
            assert "%s: %s was renamed %s" % (where, old, new) in str(e.value)


def test_an_old_spelling_is_one_line_and_exit_2(capsys):
    from bnn_transfer.train.__main__ import main

    assert run_cli(main, ["finetune", "--from", "runs/x", "--out", "runs/y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: python -m train finetune: --from was renamed --run (see python -m train finetune --help)"]
