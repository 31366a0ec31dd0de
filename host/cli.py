"""What every ``python -m <stage>`` entry point shares: the error boundary and option parsing."""

import argparse
import math
import os
import sys
import traceback

from .errors import BnnError

DEBUG_ENV = "BNN_DEBUG"

# The packages a stage imports only when it runs, by the module name Python reports missing: how pip
# names them, and the modules the stage's extra in pyproject.toml installs (all the stage needs but
# finn-plus, whose brevitas pin cannot coexist with torch's). host/ has no extra: numpy and pillow
# are the base install, the rest is optional on a board.
PIP_NAMES = {"torch": "torch", "brevitas": "brevitas", "scipy": "scipy", "matplotlib": "matplotlib", "tqdm": "tqdm",
             "qonnx": "qonnx", "onnx": "onnx", "onnxruntime": "onnxruntime", "sklearn": "scikit-learn",
             "threadpoolctl": "threadpoolctl", "PIL": "pillow", "finn": "--no-deps finn-plus==1.6.1"}
_TRAIN = ("torch", "brevitas", "scipy", "matplotlib", "tqdm")
_EXPORT = _TRAIN + ("qonnx", "onnx", "onnxruntime")
_BENCH = _EXPORT + ("sklearn", "threadpoolctl")
STAGE_EXTRAS = {"train": _TRAIN, "export": _EXPORT, "build_fpga": _EXPORT, "bench": _BENCH, "demo": _BENCH}


def finite_float(text):
    """The type of every ``type=float`` option: Python's float() also takes inf and nan, which pass any
    ``> 0`` check and then hang a loop, zero a head or divide by zero far from the option's name."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number, got %r" % text)
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: appended as "(default: X)" unless the help already
    says it in words (a None default has to: "default: the backend's own"); flags say nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or not action.option_strings or action.nargs == 0 or d is None
                or d is argparse.SUPPRESS or isinstance(d, bool)):
            return text
        return text + (" (default: none)" if d == [] else " (default: %(default)s)")


class RawEpilogHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """For a description or epilog laid out by hand (examples, one per line)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are the one line any other bad input gets: BnnError, exit 2 behind
    :func:`run_cli` (argparse itself prints the whole usage and then the error). Subcommand parsers
    inherit the class, argument groups its type registry: ``type=float`` is :func:`finite_float`.

    Every parser lists ``--debug`` (which :func:`run_cli` reads) and shows the defaults
    (:class:`HelpFormatter`). ``renamed`` maps an option's old spelling to its new one: the old one
    is refused with a line naming the new one, before argparse could take it as an abbreviation of
    the new (``--head`` of ``--head-type``)."""

    def __init__(self, *args, renamed=None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})
        self.register("type", float, finite_float)
        self.add_argument("--debug", action="store_true",
                          help="on an error, print the traceback too (or set %s=1)" % DEBUG_ENV)

    def parse_known_args(self, args=None, namespace=None):
        for arg in sys.argv[1:] if args is None else args:
            if arg == "--":
                break
            old = arg.partition("=")[0]
            if old in self.renamed:
                self.error("%s was renamed %s" % (old, self.renamed[old]))
        return super().parse_known_args(args, namespace)

    def error(self, message):
        raise BnnError("%s: %s (see %s --help)" % (self.prog, message, self.prog))


def _one_line(text):
    return " ".join(str(text).split())


def error_line(e):
    """The one line a user sees for an exception that reached the command line."""
    if isinstance(e, BnnError):
        return "error: %s" % _one_line(e)
    if isinstance(e, OSError):
        what = e.strerror or _one_line(e) or type(e).__name__
        if e.filename is not None:
            files = [os.fsdecode(e.filename)] + ([os.fsdecode(e.filename2)] if e.filename2 is not None else [])
            return "error: %s: %s" % (" -> ".join(files), what)
        return "error: %s" % what
    if isinstance(e, MemoryError):
        return "error: out of memory (a smaller batch size or fewer --workers may help)"
    return ("error: internal error, please report it: %s: %s (rerun with --debug or %s=1 for the traceback)"
            % (type(e).__name__, _one_line(e)[:300], DEBUG_ENV))


def command_name(stage):
    """How the user started ``stage``, for usage lines and messages: its console script (``bnn-host``) or
    ``python -m host``."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script if script.startswith("bnn-") else "python -m " + stage


def missing_package(e, stage):
    """The BnnError for ``e`` when it is a package ``stage`` needs and this install lacks, else None: the
    extra (or package) to install, rather than an "internal error" that is none."""
    if not isinstance(e, ModuleNotFoundError) or e.name not in PIP_NAMES:
        return None
    command = command_name(stage)
    if e.name in STAGE_EXTRAS.get(stage, ()):
        install = "'bnn-transfer[%s]'" % stage
    else:
        install = PIP_NAMES[e.name]
    return BnnError("%s needs %s: pip install %s" % (command, e.name, install))


def _stage(func):
    """The stage ``func`` belongs to, however it was started: ``python -m train`` (its module is then
    ``__main__``, whose spec names ``train.__main__``), ``python -m bnn_transfer.train`` or a console script."""
    name = func.__module__
    if name == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        name = spec.name if spec is not None else name
    parts = name.split(".")
    return parts[1] if parts[0] == "bnn_transfer" and len(parts) > 1 else parts[0]


def run_cli(main, argv=None):
    """Run ``main(argv)`` behind the error boundary every ``python -m <stage>`` shares.

    Bad input (BnnError), a file problem (OSError: unwritable output, full disk, ...) and running
    out of memory end as one line "error: <file>: <what>" on stderr and exit code 2, and so does a
    package the stage needs that is not installed (:func:`missing_package`); any other exception is
    a bug: one line and exit code 1. ``--debug`` anywhere on the command line (or
    BNN_DEBUG=1) prints the traceback first. A closed stdout (``| head``) ends quietly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        # a class named chat_é printed to an ASCII terminal (LANG=C, a PYNQ image's ssh session)
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "strict") == "strict":
            stream.reconfigure(errors="backslashreplace")
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # point stdout at devnull so that the interpreter's final flush does not raise again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as e:
        if debug:
            traceback.print_exc()
        e = missing_package(e, _stage(main)) or e
        print(error_line(e), file=sys.stderr, flush=True)
        return 2 if isinstance(e, (BnnError, OSError, MemoryError)) else 1


def _parse_value(v):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def key_value_options(pairs, flag="--option"):
    """['n_train_per_class=100', 'flowers_split=official'] -> {'n_train_per_class': 100, ...}: the values of
    the repeatable ``flag`` (numbers parsed, the rest kept as text)."""
    out = {}
    for p in pairs or ():
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise BnnError("%s %r: expected KEY=VALUE" % (flag, p))
        part, dot, option = key.strip().rpartition(".")  # a union's part keeps its name (synthetic-attributes.x)
        out[part + dot + option.replace("-", "_")] = _parse_value(value.strip())
    return out
