"""The pipeline file: YAML in, a validated :class:`PipelineSpec` out.

A pipeline is a name, variables, and an ordered mapping of steps; each step has a ``kind``
and that kind's settings, which are the same keys as the command's flags (``max_steps`` is
``--max-steps``). Values may use ``${vars.NAME}`` and ``${steps.STEP.OUTPUT}``; a variable
is substituted when the file is loaded, a step output when the step runs.

Every mistake is reported at once, each with the file, the line and the expected shape::

    pipeline.yaml:14: steps.train.max_steps: Input should be a valid integer (got 'ten')
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.errors import SlmopsError
from slmops.pipeline.steps import KINDS

REF = re.compile(r"\$\{([^}]*)\}")
STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
META_KEYS = ("kind", "needs", "cache")


class PipelineSpecError(SlmopsError):
    """A pipeline file that does not have the expected shape."""


class StepMeta(BaseModel):
    """Keys every step accepts besides its kind's settings."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    needs: list[str] = Field(default_factory=list, description="Steps that must run first (besides references).")
    cache: bool = Field(True, description="Reuse this step's outputs when its inputs and settings are unchanged.")


@dataclass(frozen=True)
class StepSpec:
    name: str
    kind: str
    settings: dict[str, Any]  # the kind's keys; may still hold ${steps...} references
    needs: tuple[str, ...]  # every earlier step this one reads from or waits for
    cache: bool = True
    line: int = 0


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str
    vars: dict[str, Any]
    steps: tuple[StepSpec, ...]
    source: str = "<pipeline>"
    text: str = ""
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)

    def step(self, name: str) -> StepSpec:
        return next(s for s in self.steps if s.name == name)

    def downstream(self, name: str) -> list[str]:
        """Steps that (directly or not) depend on ``name``."""
        out: list[str] = []
        for s in self.steps:
            if name in s.needs or any(n in out for n in s.needs):
                out.append(s.name)
        return out


# -- YAML with line numbers -------------------------------------------------------------------
def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, (*path, i), out)


def line_of(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int:
    """The line of ``path`` or of its closest ancestor that is in the file."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineSpecError(f"{where}: not valid YAML: {problem}.",
                                "Check the indentation and quoting there.") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    return data, lines


# -- variables --------------------------------------------------------------------------------
def substitute(value: Any, lookup: Any, path: tuple[Any, ...], problems: list[tuple[tuple[Any, ...], str]],
               prefix: str) -> Any:
    """Replace ``${prefix.X...}`` references in ``value`` by ``lookup(expr)``; other references stay.

    A string that is exactly one reference takes the referenced value's type; a reference
    inside a longer string is interpolated as text.
    """
    if isinstance(value, dict):
        return {k: substitute(v, lookup, (*path, k), problems, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup, (*path, i), problems, prefix) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(expr: str) -> tuple[bool, Any]:
        expr = expr.strip()
        if not expr.startswith(prefix + "."):
            return False, None
        try:
            return True, lookup(expr[len(prefix) + 1 :])
        except KeyError as exc:
            problems.append((path, exc.args[0]))
            return True, None

    whole = REF.fullmatch(value.strip())
    if whole:
        found, result = one(whole.group(1))
        return result if found else value

    def repl(m: re.Match[str]) -> str:
        found, result = one(m.group(1))
        return str(result) if found else m.group(0)

    return REF.sub(repl, value)


def references(value: Any) -> set[str]:
    """Names of the steps that ``${steps.NAME...}`` references in ``value`` point to."""
    if isinstance(value, dict):
        return set().union(*(references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(references(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {m.group(1).strip().split(".")[1] for m in REF.finditer(value)
                if m.group(1).strip().startswith("steps.") and m.group(1).count(".") >= 1}
    return set()


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """``["steps=20", "steps.train.lr=1e-4"]`` (``--set``) → overrides, each value read as YAML: a
    variable (``NAME=VALUE``) or a step's setting (``steps.NAME.KEY=VALUE``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PipelineSpecError(f"--set {item!r} is not NAME=VALUE.", "Example: --set train_steps=20")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


# -- the spec ---------------------------------------------------------------------------------
def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    if not path.is_file():
        raise PipelineSpecError(f"Pipeline file {path} does not exist.",
                                "Give the path of a pipeline YAML (slmops demo --show-pipeline prints an example).")
    return parse_spec(path.read_text(encoding="utf-8"), str(path), overrides)


def parse_spec(text: str, source: str = "<pipeline>", overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Parse and validate a pipeline; all problems are reported in one error."""
    data, lines = _parse_yaml(text, source)
    problems: list[tuple[tuple[Any, ...], str]] = []
    if not isinstance(data, dict):
        raise PipelineSpecError(f"{source}:1: a pipeline is a mapping with name, vars and steps.",
                                "See the demo pipeline (slmops demo --show-pipeline).")
    for key in data:
        if key not in ("name", "description", "vars", "steps"):
            problems.append(((key,), "unknown key; a pipeline has: name, description, vars, steps"))
    name = data.get("name")
    if not isinstance(name, str) or not STEP_NAME.match(name):
        problems.append((("name",), "expected a name of lower-case letters, digits, '-' or '_' (e.g. support-bot)"))
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        problems.append((("vars",), "expected a mapping of variable names to values"))
        variables = {}
    step_sets = {k: v for k, v in (overrides or {}).items() if k.startswith("steps.")}
    var_sets = {k: v for k, v in (overrides or {}).items() if k not in step_sets}
    unknown_sets = sorted(set(var_sets) - set(variables))
    if unknown_sets:
        problems.append((("vars",), f"--set names unknown variables: {', '.join(unknown_sets)} "
                                    f"(this pipeline has: {', '.join(variables) or 'none'})"))
    variables = {**variables, **{k: v for k, v in var_sets.items() if k in variables}}

    def var(expr: str) -> Any:
        if expr not in variables:
            raise KeyError(f"unknown variable ${{vars.{expr}}} (defined: {', '.join(variables) or 'none'})")
        return variables[expr]

    raw_steps = data.get("steps")
    steps: list[StepSpec] = []
    if not isinstance(raw_steps, dict) or not raw_steps:
        problems.append((("steps",), "expected a mapping of step names to steps, with at least one step"))
        raw_steps = {}
    raw_steps = _set_step_keys(raw_steps, step_sets, problems)
    for step_name, raw in raw_steps.items():
        path: tuple[Any, ...] = ("steps", step_name)
        if not isinstance(step_name, str) or not STEP_NAME.match(step_name):
            problems.append((path, "a step name is lower-case letters, digits, '-' or '_', starting with a letter"))
            continue
        if not isinstance(raw, dict):
            problems.append((path, f"expected a mapping with 'kind' ({', '.join(KINDS)}) and its settings"))
            continue
        raw = substitute(raw, var, path, problems, "vars")
        step = _step(step_name, raw, path, [s.name for s in steps], problems, lines)
        if step is not None:
            steps.append(step)
    if problems:
        listed = "\n".join(f"  {source}:{line_of(lines, p)}: {'.'.join(map(str, p))}: {msg}"
                           for p, msg in problems)
        raise PipelineSpecError(f"{source}: {len(problems)} problem(s) in the pipeline:\n{listed}",
                                "\nFix them and run again; `slmops run --help` shows the format.")
    return PipelineSpec(name, str(data.get("description") or ""), variables, tuple(steps), source, text, lines)


def _set_step_keys(raw_steps: dict[str, Any], sets: dict[str, Any],
                   problems: list[tuple[tuple[Any, ...], str]]) -> dict[str, Any]:
    """Apply ``--set steps.NAME.KEY[.SUBKEY]=VALUE`` to a copy of the steps, before they are checked
    (so an override is validated like a key written in the file)."""
    if not sets:
        return raw_steps
    out = copy.deepcopy(raw_steps)
    for dotted, value in sets.items():
        parts = dotted.split(".")[1:]
        if len(parts) < 2 or not all(parts):
            problems.append((("steps",), f"--set {dotted}: expected steps.NAME.KEY=VALUE"))
            continue
        node = out.get(parts[0])
        if not isinstance(node, dict):
            problems.append((("steps",), f"--set {dotted}: no step {parts[0]!r} "
                                         f"(this pipeline has: {', '.join(map(str, out)) or 'none'})"))
            continue
        for i, key in enumerate(parts[1:-1], 1):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                problems.append((("steps", *parts[: i + 1]), f"--set {dotted}: {key!r} is not a mapping"))
                break
            node = child
        else:
            node[parts[-1]] = value
    return out


def _step(name: str, raw: dict[str, Any], path: tuple[Any, ...], earlier: list[str],
          problems: list[tuple[tuple[Any, ...], str]], lines: dict[tuple[Any, ...], int]) -> StepSpec | None:
    meta_raw = {k: raw[k] for k in META_KEYS if k in raw}
    try:
        meta = StepMeta(**meta_raw)
    except ValidationError as exc:
        for e in exc.errors():
            problems.append(((*path, *e["loc"]), e["msg"]))
        return None
    kind = KINDS.get(meta.kind)
    if kind is None:
        problems.append(((*path, "kind"), f"unknown step kind {meta.kind!r}; use one of: {', '.join(KINDS)}"))
        return None
    settings = {k: v for k, v in raw.items() if k not in META_KEYS}
    for ref in sorted(references(settings)):
        if ref == name or ref not in earlier:
            problems.append((path, f"${{steps.{ref}...}} must name an earlier step "
                                   f"(earlier steps: {', '.join(earlier) or 'none'})"))
    for need in meta.needs:
        if need not in earlier:
            problems.append(((*path, "needs"), f"{need!r} is not an earlier step"))
    for loc, msg in kind.problems(settings):
        problems.append(((*path, *loc), msg))
    needs = tuple(s for s in earlier if s in references(settings) or s in meta.needs)
    return StepSpec(name, meta.kind, settings, needs, meta.cache, line_of(lines, path))
