"""The package metadata matches the code: every third-party import is a declared dependency
(core, or an extra when it is imported only where its feature needs it), the declared floors
are what the code uses, and the LICENSE the metadata names is shipped."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FEATURE_EXTRAS = ("parquet", "qlora", "search")
IMPORT_NAMES = {"llama_cpp": "llama-cpp-python"}  # import name -> distribution, for extras not installed here
PART_OF = {"starlette": "fastapi"}  # imported directly, versioned by the framework that pins it


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


def _declared(group: list[str]) -> set[str]:
    return {_name(r) for r in group}


CORE = _declared(PYPROJECT["dependencies"])
EXTRAS = {extra: _declared(reqs) for extra, reqs in PYPROJECT["optional-dependencies"].items()}


def _imports() -> list[tuple[str, str, bool]]:
    """(top-level module, file, imported at module level) for every import in src/slmops, except
    guarded ones (inside a ``try`` that catches ImportError: optional, or an extra's with its own message)."""
    out = []
    for path in (ROOT / "src" / "slmops").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        optional = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try)
            and any(_catches_import_error(h) for h in node.handlers)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        top_level = {id(node) for node in tree.body} | {
            id(n) for node in tree.body if isinstance(node, ast.If | ast.Try) for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if id(node) in optional:
                continue
            for name in names:
                out.append((name.split(".")[0], str(path.relative_to(ROOT)), id(node) in top_level))
    return out


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


@functools.cache
def _modules() -> dict[str, list[str]]:
    return packages_distributions()


def _distribution(module: str) -> str:
    if module in IMPORT_NAMES:
        return IMPORT_NAMES[module]
    found = _modules().get(module)
    dist = _name(found[0]) if found else _name(module)
    return PART_OF.get(dist, dist)


def test_every_third_party_import_is_declared():
    problems = []
    for module, where, top_level in _imports():
        if module in sys.stdlib_module_names or module in ("slmops", "__future__"):
            continue
        dist = _distribution(module)
        in_extra = [e for e, names in EXTRAS.items() if dist in names and e != "dev"]
        if dist in CORE:
            continue
        if not in_extra:
            problems.append(f"{where}: imports {module} ({dist}), declared nowhere in pyproject.toml")
        elif top_level:
            problems.append(f"{where}: imports {module} (extra {in_extra[0]}) at module level; import it where used")
    assert not problems, "\n".join(sorted(set(problems)))


def test_feature_extras_are_out_of_core_and_in_dev():
    assert {"pyarrow", "bitsandbytes", "optuna"}.isdisjoint(CORE)
    assert EXTRAS["parquet"] == {"pyarrow"} and EXTRAS["qlora"] == {"bitsandbytes"} and EXTRAS["search"] == {"optuna"}
    dev = " ".join(PYPROJECT["optional-dependencies"]["dev"])
    assert all(extra in dev for extra in FEATURE_EXTRAS), dev  # the suite tests every feature
    assert "openai" in CORE  # the deploy step and RemoteEngine import it


def test_the_pydantic_floor_has_what_the_code_uses():
    floor = next(r for r in PYPROJECT["dependencies"] if _name(r) == "pydantic")
    major, minor = map(int, re.search(r">=\s*(\d+)\.(\d+)", floor).groups())
    assert (major, minor) >= (2, 12)  # Field(exclude_if=...) arrived in pydantic 2.12
    assert "exclude_if" in (ROOT / "src" / "slmops" / "serve" / "protocol.py").read_text()


def test_the_license_file_is_the_one_declared():
    assert PYPROJECT["license"] == "Apache-2.0" and PYPROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_missing_extras_are_named(monkeypatch):
    import importlib

    import pytest

    from slmops.errors import SlmopsError

    model = importlib.import_module("slmops.train.model")
    search_module = importlib.import_module("slmops.train.search")  # slmops.train.search is also a function

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(SlmopsError, match=r"pip install 'slmops\[qlora\]'"):
        model._nf4_config()
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(SlmopsError, match=r"pip install 'slmops\[search\]'"):
        search_module._optuna()
