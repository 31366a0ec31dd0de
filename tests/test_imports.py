"""No import circles among the repo's modules: every import, at module level or inside a function,
is an edge; a package's ``from . import submodule`` is an edge to the submodule, not to the package."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("host", "train", "export", "build_fpga", "bench", "demo")
NAMESPACE = "bnn_transfer."  # the stages import each other as bnn_transfer.<stage> (bnn_transfer/__init__.py)


def _module_name(path):
    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def _unprefixed(name):
    return name[len(NAMESPACE):] if name.startswith(NAMESPACE) else name


def import_graph():
    files = {}
    for pkg in PACKAGES:
        for root, _, names in os.walk(os.path.join(ROOT, pkg)):
            paths = [os.path.join(root, n) for n in names if n.endswith(".py")]
            files.update({_module_name(p): p for p in paths})
    graph = {}
    for mod, path in files.items():
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom):
                base = _unprefixed(node.module or "")
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = [m for m in (_unprefixed(base + "." + a.name) for a in node.names) if m in files]
                deps.update(subs if len(subs) == len(node.names) else subs + [base])
            elif isinstance(node, ast.Import):
                deps.update(_unprefixed(a.name) for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = import_graph()
    assert "host.errors" in graph["train.fit"] and "host" in graph["build_fpga.bundle"]  # namespaced edges are seen
    assert cycles(graph) == []


def test_the_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
