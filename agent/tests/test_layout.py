"""The agent's shape (issue 10), counted from the code: the layers import one way, there
is no import circle (imports inside functions counted too), few imports inside
functions, no class too big to hold in one's head, and the client library imports
nothing of the daemon. Each count fails when the code breaks the rule."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "pyctdb"

#: The layers, lowest first: a module may import its own layer and the ones below.
LAYERS = ["errors", "common", "rules", "protocol", "client", "server", "tools", "testing"]
#: Which layers each layer may import (besides itself and the package root).
ALLOWED = {
    "errors": set(),
    "common": {"errors"},
    "rules": {"errors", "common"},
    "protocol": {"errors", "common", "rules"},
    "client": {"errors", "common", "rules", "protocol"},
    "server": {"errors", "common", "rules", "protocol"},
    "tools": {"errors", "common", "rules", "protocol", "client"},
    "testing": {"errors", "common", "rules", "protocol", "client"},
}
MAX_FUNCTION_IMPORTS = 20
MAX_CLASS_LINES = 500


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: pathlib.Path, modules):
    """[(imported module, line, inside a function)] of the package's own modules."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - child.level + 1]
                    base = ".".join(base + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                if base == "pyctdb" or base.startswith("pyctdb."):
                    for a in child.names:
                        full = f"{base}.{a.name}"
                        out.append((full if full in modules else base, child.lineno, inner))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("pyctdb"):
                        out.append((a.name, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return out


def _graph():
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _, _ in _imports(p, modules):
            # importing pyctdb.a.b runs pyctdb.a's __init__ too: count the module itself
            if target in modules and target != m:
                graph[m].add(target)
    return modules, graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pyctdb"


def test_no_import_circles():
    _, graph = _graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def strong(v):                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert not circles, f"import circles: {circles}"


def test_layers_import_one_way():
    modules, graph = _graph()
    wrong = []
    for m, targets in graph.items():
        mine = _layer(m)
        if mine not in ALLOWED:
            continue
        for t in targets:
            theirs = _layer(t)
            if theirs in ("pyctdb", mine) or theirs in ALLOWED[mine]:
                continue
            wrong.append(f"{m} -> {t}")
    assert not wrong, "imports against the layers: " + "; ".join(sorted(wrong))


def test_the_client_library_imports_nothing_of_the_daemon():
    modules = _modules()
    bad = [f"{_module(p)}:{line} {t}" for m, p in modules.items() if _layer(m) == "client"
           for t, line, _ in _imports(p, modules) if _layer(t) in ("server", "tools")]
    assert not bad, bad


def test_few_imports_inside_functions():
    modules = _modules()
    inside = [f"{p.relative_to(SRC)}:{line} {t}" for m, p in modules.items()
              for t, line, in_function in _imports(p, modules) if in_function]
    assert len(inside) <= MAX_FUNCTION_IMPORTS, (
        f"{len(inside)} imports of the package inside functions (at most "
        f"{MAX_FUNCTION_IMPORTS}): " + "; ".join(inside))


def test_no_class_over_500_lines():
    big = []
    for p in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    big.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not big, big


def test_every_error_derives_from_the_root():
    from pyctdb.errors import PyctdbError
    import importlib

    loose = []
    for m in _modules():
        mod = importlib.import_module(m)
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, Exception)
                    and obj.__module__ == m and not issubclass(obj, PyctdbError)
                    and not name.startswith("_Retry")):
                loose.append(f"{m}.{name}")
    assert not loose, f"errors outside PyctdbError: {loose}"


@pytest.mark.parametrize("layer", ["common", "rules", "protocol", "server", "client", "tools"])
def test_every_layer_says_what_it_holds(layer):
    init = SRC / layer / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{layer}/__init__.py has no docstring"
