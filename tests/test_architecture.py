"""The package's structure: no module imports from a layer above its own, and no import
cycle (between modules, or between a package's ``__init__`` and its modules).

Every ``import slmops...`` in ``src/slmops`` is read with :mod:`ast` (module level, inside
functions and under ``TYPE_CHECKING`` alike). ``from slmops.x import y`` counts as an import of
``slmops.x.y`` when ``y`` is a module, else of the package ``slmops.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first; a module may import from its own layer or any layer below. Keep in step with
# the README's "Architecture" section.
LAYERS: list[set[str]] = [
    {"errors", "files"},  # the error family; atomic writes and file hashing
    {"models"},  # the store, catalog, loaders: records and folders, no inference
    {"engines"},  # inference backends and the request/result types every layer above uses
    {"", "data"},  # "" = top-level modules: the API facade (slmops/__init__), generate, checks
    {"train"},
    {"evaluate"},
    {"optimize"},  # uses evaluate for quality/task checks
    {"distill"},  # uses optimize (prune) and train
    {"serve"},
    {"ops"},  # client-side deployment tools: validate, load bench, target (above serve and evaluate)
    {"fleet"},
    {"pipeline"},
    {"ui"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "slmops").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "slmops"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "slmops":
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: use absolute imports (from slmops.... import ...)")
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _layer(module: str) -> str:
    """``slmops.serve.app`` -> ``serve``; a top-level module is its own layer when named in LAYERS
    (``errors``, ``__main__``), else ``""``; an unknown package is returned as is (and fails)."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in RANK or (SRC / "slmops" / parts[1]).is_dir() else ""


def test_every_package_has_a_layer():
    assert {_layer(m) for m in _modules()} <= set(RANK), "add the new package to LAYERS"


def test_no_module_imports_from_a_layer_above():
    upward = [f"{m} -> {d}" for m, deps in sorted(_graph().items()) for d in sorted(deps)
              if RANK[_layer(d)] > RANK[_layer(m)]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([*comp, v]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_finds_cycles_and_upward_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert RANK[_layer("slmops.cli.main")] > RANK[_layer("slmops.serve.app")] > RANK[_layer("slmops.engines.base")]
