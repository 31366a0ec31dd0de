"""host/ runs on PYNQ images: Python 3.8, numpy 1.20..2.x, no torch/scipy/sklearn, nothing above it imported."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "host")


def _sources():
    out = []
    for dirpath, dirnames, filenames in os.walk(HOST):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


SOURCES = _sources()
IDS = [os.path.relpath(p, ROOT) for p in SOURCES]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, ROOT)


def test_the_scan_sees_every_module():
    names = {_module_name(p) for p in SOURCES}
    assert {"host", "host.__main__", "host.extract", "host.backends", "host.backends.pynq"} <= names


# ------------------------------------------------------------------------------------------ (a) Python 3.8


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_parses_as_python_3_8(path):
    ast.parse(_read(path), filename=path, feature_version=(3, 8))


# Grammar-level checks cannot see these: they parse on 3.8 and fail when they run there.
_BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
_NEWER_STDLIB_CALLS = {
    "removeprefix": "3.9", "removesuffix": "3.9", "bit_count": "3.10", "is_relative_to": "3.9",
}
_NEWER_STDLIB_ATTRS = {("functools", "cache"): "3.9", ("math", "lcm"): "3.9", ("itertools", "pairwise"): "3.10",
                       ("typing", "TypeAlias"): "3.10", ("typing", "ParamSpec"): "3.10", ("sys", "stdlib_module_names"):
                       "3.10"}


def _annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    yield a.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_no_runtime_features_newer_than_3_8(path):
    src = _read(path)
    tree = ast.parse(src)
    postponed = "from __future__ import annotations" in src
    problems = []
    if not postponed:
        for ann in _annotations(tree):
            for node in ast.walk(ann):
                if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                        and node.value.id in _BUILTIN_GENERICS:
                    problems.append("line %d: %s[...] annotation (3.9)" % (node.lineno, node.value.id))
                if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                    problems.append("line %d: X | Y annotation (3.10)" % node.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _NEWER_STDLIB_CALLS:
            problems.append("line %d: .%s() (%s)" % (node.lineno, node.func.attr, _NEWER_STDLIB_CALLS[node.func.attr]))
        if isinstance(node, ast.Call) and any(k.arg == "strict" for k in node.keywords) \
                and isinstance(node.func, ast.Name) and node.func.id == "zip":
            problems.append("line %d: zip(strict=...) (3.10)" % node.lineno)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id, node.attr) in _NEWER_STDLIB_ATTRS:
            problems.append("line %d: %s.%s (%s)" % (node.lineno, node.value.id, node.attr,
                                                     _NEWER_STDLIB_ATTRS[(node.value.id, node.attr)]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dataclass" \
                and any(k.arg in ("slots", "kw_only") for k in node.keywords):
            problems.append("line %d: dataclass(slots=/kw_only=) (3.10)" % node.lineno)
    assert not problems, "%s uses Python newer than 3.8:\n  %s" % (_rel(path), "\n  ".join(problems))


# ------------------------------------------------------------------------------------------ (b) imports

BLOCKED = ("torch", "torchvision", "brevitas", "qonnx", "finn", "onnx", "onnxruntime", "scipy", "sklearn", "pynq",
           # optional at run time, so never needed just to import a module
           "PIL", "tqdm", "matplotlib")

_IMPORT_ALL = r"""
import importlib, sys
blocked = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked for this test: " + name)
        return None

sys.meta_path.insert(0, Blocker())
for name in sys.argv[2:]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
assert not leaked, leaked
print("imported", len(sys.argv) - 2)
"""


def test_every_module_imports_without_the_heavy_or_optional_packages():
    names = sorted(_module_name(p) for p in SOURCES)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALL, ",".join(BLOCKED)] + names, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "imported %d" % len(names)


# ------------------------------------------------------------------------------------------ (c) numpy 1.20..2.x

# Added after numpy 1.20: fine only behind a hasattr/getattr fallback.
NUMPY_NEW = {
    "bitwise_count": "2.0", "unstack": "2.1", "astype": "2.0", "isdtype": "2.0", "concat": "2.0",
    "permute_dims": "2.0", "matrix_transpose": "2.0", "vecdot": "2.0", "matvec": "2.2", "vecmat": "2.2",
    "cumulative_sum": "2.1", "cumulative_prod": "2.1", "trapezoid": "2.0", "unique_values": "2.0",
    "unique_counts": "2.0", "unique_inverse": "2.0", "unique_all": "2.0", "pow": "2.0", "acos": "2.0",
    "asin": "2.0", "atan": "2.0", "atan2": "2.0", "acosh": "2.0", "asinh": "2.0", "atanh": "2.0",
    "bitwise_left_shift": "2.0", "bitwise_right_shift": "2.0", "bitwise_invert": "2.0", "strings": "2.0",
    "exceptions": "1.25", "dtypes": "1.25", "long": "2.0", "ulong": "2.0",
    "linalg.vector_norm": "2.0", "linalg.matrix_norm": "2.0", "linalg.vecdot": "2.0", "linalg.svdvals": "2.0",
    "linalg.matrix_transpose": "2.0", "linalg.diagonal": "2.0", "linalg.trace": "2.0", "linalg.outer": "2.0",
    "linalg.cross": "2.0", "lib.array_utils": "2.0",
}
# Gone in numpy 2.x (or 1.24+): these break the PC side instead of the board.
NUMPY_REMOVED = {
    "float_": "2.0", "complex_": "2.0", "NaN": "2.0", "Inf": "2.0", "NINF": "2.0", "PINF": "2.0", "infty": "2.0",
    "Infinity": "2.0", "NAN": "2.0", "product": "2.0", "cumproduct": "2.0", "alltrue": "2.0", "sometrue": "2.0",
    "row_stack": "2.0", "trapz": "2.0", "in1d": "2.0", "msort": "2.0", "asfarray": "2.0", "round_": "2.0",
    "unicode_": "2.0", "string_": "2.0", "bool8": "2.0", "int0": "2.0", "uint0": "2.0", "find_common_type": "2.0",
    "mat": "2.0", "cast": "2.0", "source": "2.0", "safe_eval": "2.0", "issubclass_": "2.0", "asscalar": "1.23",
    "bool": "1.24 (back in 2.0)", "int": "1.24", "float": "1.24", "object": "1.24", "str": "1.24",
    "complex": "1.24", "core": "2.0 (numpy._core)",
}


def _dotted(node):
    """'np.linalg.vector_norm' -> ('np', 'linalg.vector_norm'); None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and parts:
        return node.id, ".".join(reversed(parts))
    return None


def _numpy_aliases(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name for a in node.names if a.name == "numpy")
    return names


def _numpy_problems(src):
    tree = ast.parse(src)
    aliases = _numpy_aliases(tree)
    problems = set()
    for node in ast.walk(tree):
        d = _dotted(node) if isinstance(node, ast.Attribute) else None
        if d is None or d[0] not in aliases:
            continue
        for table, what in ((NUMPY_NEW, "newer than 1.20"), (NUMPY_REMOVED, "removed in numpy")):
            for name, version in table.items():
                if d[1] == name or d[1].startswith(name + "."):
                    # a fallback names the attribute as a string: hasattr(np, "x") / getattr(np, "x", ...)
                    fallback = ('"%s"' % name.split(".")[-1]) in src or ("'%s'" % name.split(".")[-1]) in src
                    if table is NUMPY_REMOVED or not fallback:
                        problems.add("line %d: %s.%s (%s %s)" % (node.lineno, d[0], name, what, version))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        d = _dotted(node.func)
        if d is None or d[0] not in aliases:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        where = "line %d: %s.%s" % (node.lineno, d[0], d[1])
        if d[1] == "array" and isinstance(kw.get("copy"), ast.Constant) and kw["copy"].value is False:
            problems.add(where + "(copy=False) raises on numpy 2 when a copy is needed")
        if d[1] == "asarray" and "copy" in kw:
            problems.add(where + "(copy=...) (2.0)")
        if d[1] == "reshape" and "copy" in kw:
            problems.add(where + "(copy=...) (2.1)")
        if d[1] in ("sort", "argsort") and "stable" in kw:
            problems.add(where + "(stable=...) (2.0); use kind='stable'")
        if d[1] in ("percentile", "quantile", "nanpercentile", "nanquantile") and "method" in kw:
            problems.add(where + "(method=...) (1.22)")
        if d[1] == "unique" and "equal_nan" in kw:
            problems.add(where + "(equal_nan=...) (1.24)")
    return sorted(problems)


def test_the_numpy_scan_catches_what_it_should():
    assert _numpy_problems("import numpy as np\nx = np.bitwise_count(a)\n")
    assert _numpy_problems("import numpy\nx = numpy.linalg.vector_norm(a)\n")
    assert _numpy_problems("import numpy as np\nx = np.array(a, copy=False)\n")
    assert _numpy_problems("import numpy as np\nx = np.float_(1)\n")
    assert _numpy_problems("import numpy as np\nx = np.sort(a, stable=True)\n")
    ok = "import numpy as np\nif hasattr(np, 'bitwise_count'):\n    x = np.bitwise_count(a)\n"
    assert not _numpy_problems(ok)
    assert not _numpy_problems("import numpy as np\nx = np.packbits(a, bitorder='little')\nb = a.astype(np.int8)\n")


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_numpy_api_between_1_20_and_2_x(path):
    problems = _numpy_problems(_read(path))
    assert not problems, "%s:\n  %s" % (_rel(path), "\n  ".join(problems))


# ------------------------------------------------------------------------------------------ (d) layering

NEVER = {"train", "export", "build_fpga", "bench", "torch", "torchvision", "brevitas", "finn", "sklearn"}
# host/ names itself only relatively: it runs as the top-level `host` in a bundle and as `bnn_transfer.host` in a
# checkout or an installed copy, where an absolute `host` would be another copy of the module (or none at all)
OWN_NAMES = {"host", "bnn_transfer"}
# module level: numpy and the standard library only (PIL, tqdm, matplotlib, pynq, qonnx, scipy lazily)
MODULE_LEVEL_OK = {"numpy"}


def _imports(tree):
    """(top-level name, at module level?, line) of every absolute import."""
    top_level = set()
    for node in tree.body:
        top_level.add(node)
        if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:` / try-except import blocks
            top_level.update(ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node in top_level, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node in top_level, node.lineno


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_imports_stay_in_the_board_runtime(path):
    stdlib = getattr(sys, "stdlib_module_names", None)
    problems = []
    for name, module_level, line in _imports(ast.parse(_read(path))):
        if name in NEVER:
            problems.append("line %d: imports %s (host/ is the lowest layer)" % (line, name))
        elif name in OWN_NAMES:
            problems.append("line %d: imports %s absolutely (host/ imports itself relatively)" % (line, name))
        elif module_level and name not in MODULE_LEVEL_OK and stdlib is not None and name not in stdlib \
                and name != "__future__":
            problems.append("line %d: module-level import of %s (only numpy and the standard library)" % (line, name))
    assert not problems, "%s:\n  %s" % (_rel(path), "\n  ".join(problems))
