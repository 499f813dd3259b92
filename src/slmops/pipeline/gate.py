"""Quality gates: comparisons over step outputs, evaluated without ``eval``.

A check is a comparison whose sides are arithmetic over numbers and ``${steps...}``
references, e.g. ``${steps.eval.student.accuracy} >= 0.92 * ${steps.eval.teacher.accuracy}``.
The evaluator lives in :mod:`slmops.checks` (the fleet's roll-out gates use it too).
"""

from __future__ import annotations

from slmops.checks import CheckResult, evaluate_check, parse_check

__all__ = ["CheckResult", "evaluate_check", "parse_check"]
