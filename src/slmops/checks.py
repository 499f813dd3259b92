"""Safe check expressions: the comparisons of pipeline gates and roll-out gates, evaluated
without ``eval`` (shared by :mod:`slmops.pipeline` and :mod:`slmops.fleet`, so it lives below both).

A check is a comparison whose sides are arithmetic over numbers and ``${steps...}``
references, e.g. ``${steps.eval.student.accuracy} >= 0.92 * ${steps.eval.teacher.accuracy}``.
Only numbers, ``+ - * /``, parentheses, unary minus and one or more comparisons are allowed.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

_REF = re.compile(r"\$\{([^}]*)\}")
_BIN: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}
_CMP: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


@dataclass(frozen=True)
class CheckResult:
    check: str  # as written
    evaluated: str  # with the values filled in
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_check(check: str, placeholder: float | None = None,
                lookup: Callable[[str], Any] | None = None) -> tuple[ast.Compare, dict[str, float], str]:
    """The comparison of ``check`` with references replaced by ``lookup(expr)`` (or ``placeholder``);
    raises ``ValueError`` naming what is wrong."""
    names: dict[str, float] = {}

    def repl(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        value = placeholder if lookup is None else lookup(expr)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"${{{expr}}} is {value!r}, not a number")
        key = f"_v{len(names)}"
        names[key] = float(value)
        return key

    text = _REF.sub(repl, check)
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot read {check!r}; write a comparison such as "
                         "\"${steps.eval.student.accuracy} >= 0.9 * ${steps.eval.teacher.accuracy}\"") from None
    if not isinstance(tree, ast.Compare):
        raise ValueError(f"{check!r} is not a comparison (use <, <=, >, >=, ==, !=)")
    _value(tree.left, names)
    for op, side in zip(tree.ops, tree.comparators, strict=True):
        if type(op) not in _CMP:
            raise ValueError(f"{check!r}: only <, <=, >, >=, ==, != compare")
        _value(side, names)
    shown = _REF.sub(lambda m: _fmt(lookup(m.group(1).strip())) if lookup else m.group(0), check)
    return tree, names, shown


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(node: ast.AST, names: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _value(node.left, names), _value(node.right, names)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _BIN[type(node.op)](left, right)
    raise ValueError(f"only numbers, ${{steps...}} references and + - * / are allowed (found {ast.unparse(node)!r})")


def evaluate_check(check: str, lookup: Callable[[str], Any]) -> CheckResult:
    tree, names, shown = parse_check(check, lookup=lookup)
    left = _value(tree.left, names)
    passed = True
    for op, side in zip(tree.ops, tree.comparators, strict=True):
        right = _value(side, names)
        passed = passed and _CMP[type(op)](left, right)
        left = right
    return CheckResult(check, shown, passed)
