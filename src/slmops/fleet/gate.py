"""The roll-out gate: the wave's telemetry against the baseline's, in the pipeline's safe evaluator.

An expression is one or more comparisons joined by ``and``, over the metric names below and
``baseline.NAME``, numbers and ``+ - * /``::

    p95_ms <= 1.2 * baseline.p95_ms and probe_score >= baseline.probe_score - 5

Names are rewritten to ``${NAME}`` references and handed to :mod:`slmops.checks`, so
there is one evaluator (no ``eval``). An unknown name is an error when the roll-out is created.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slmops.checks import evaluate_check, parse_check
from slmops.errors import SlmopsError
from slmops.fleet.protocol import Telemetry

METRICS = ("error_rate", "p50_ms", "p95_ms", "ttft_ms", "tokens_per_second", "memory_mb", "probe_score", "requests")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
_AND = re.compile(r"\s+and\s+|\s*&&\s*")


def _parts(expr: str) -> list[str]:
    parts = [p.strip() for p in _AND.split(expr.strip())]
    if not expr.strip() or not all(parts):
        raise SlmopsError(f"--gate {expr!r} is empty or has an empty side of 'and'.",
                          hint="Example: --gate 'p95_ms <= 1.2 * baseline.p95_ms and "
                               "probe_score >= baseline.probe_score - 5'.")
    return parts


def _names(part: str) -> list[str]:
    return _IDENT.findall(part)


def _rewrite(part: str) -> str:
    return _IDENT.sub(lambda m: "${" + m.group(1) + "}", part)


def gate_names(expr: str) -> list[str]:
    """The names an expression uses, after checking it parses and names only known metrics."""
    used: list[str] = []
    for part in _parts(expr):
        for name in _names(part):
            metric = name.removeprefix("baseline.")
            if metric not in METRICS:
                raise SlmopsError(
                    f"--gate names {name!r}, which is not a fleet metric.",
                    hint=f"Use {', '.join(METRICS)}, each also as baseline.NAME.",
                )
            if name not in used:
                used.append(name)
        try:
            parse_check(_rewrite(part), placeholder=1.0)
        except ValueError as exc:
            why = "cannot read it" if "cannot read" in str(exc) else str(exc).replace("${", "").replace("}", "")
            raise SlmopsError(f"--gate {part!r}: {why}.",
                              hint="Write comparisons of metrics, e.g. p95_ms <= 1.2 * baseline.p95_ms.") from None
    return used


# -- aggregation ---------------------------------------------------------------------------
def aggregate(windows: Iterable[Telemetry]) -> dict[str, Any]:
    """One group's numbers over its windows: request sums, request-weighted latencies (plain
    mean where no window had requests), means of throughput, memory and probe score, and how
    many devices and windows contributed."""
    ws = list(windows)
    out: dict[str, Any] = {"devices": len({w.device_id for w in ws}), "windows": len(ws)}
    requests = sum(w.requests for w in ws)
    errors = sum(w.errors for w in ws)
    out["requests"] = requests if ws else None
    out["error_rate"] = errors / requests if requests else None
    for name in ("p50_ms", "p95_ms", "ttft_ms"):
        pairs = [(getattr(w, name), w.requests) for w in ws if getattr(w, name) is not None]
        weight = sum(n for _, n in pairs)
        if weight:
            out[name] = sum(v * n for v, n in pairs) / weight
        else:
            out[name] = sum(v for v, _ in pairs) / len(pairs) if pairs else None
    for name in ("tokens_per_second", "memory_mb", "probe_score"):
        vals = [getattr(w, name) for w in ws if getattr(w, name) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
    return out


@dataclass
class GateResult:
    group: str  # "wave" or "zone=b"
    passed: bool
    evaluated: str  # the expression with the numbers filled in
    missing: list[str] = field(default_factory=list)  # names without a value
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "passed": self.passed, "evaluated": self.evaluated,
                "missing": self.missing, "values": self.values}


def evaluate_gate(expr: str, wave: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                  group: str = "wave") -> GateResult:
    """Evaluate ``expr`` with the wave's and the baseline's aggregates. A name without a value
    makes the result not passed with ``missing`` set (the caller decides fail-safe or continue)."""
    names = gate_names(expr)
    baseline = baseline or {}

    def value(name: str) -> Any:
        if name.startswith("baseline."):
            return baseline.get(name.removeprefix("baseline."))
        return wave.get(name)

    values = {n: value(n) for n in names}
    missing = [n for n, v in values.items() if v is None]
    if missing:
        shown = expr
        for n, v in values.items():
            shown = re.sub(rf"(?<![\w.]){re.escape(n)}(?![\w.])", "?" if v is None else f"{v:.4g}", shown)
        return GateResult(group, False, shown, missing, values)
    passed = True
    shown_parts = []
    for part in _parts(expr):
        res = evaluate_check(_rewrite(part), lambda ref: float(values[ref]))
        passed = passed and res.passed
        shown_parts.append(res.evaluated)
    return GateResult(group, passed, " and ".join(shown_parts), [], values)
