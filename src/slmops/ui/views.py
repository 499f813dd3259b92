"""What the pages show, read from the store and the run folders (no second source of truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import Any

from slmops.evaluate import svg
from slmops.models.store import ModelRecord, ModelStore
from slmops.pipeline.run import PipelineRun
from slmops.pipeline.runs import compare_runs


# -- models ---------------------------------------------------------------------------------
def eval_summaries(rec: ModelRecord) -> dict[str, dict[str, Any]]:
    """``eval.<task>.<dataset>`` → the summary an evaluation recorded on this version."""
    return {k: v for k, v in (rec.metrics or {}).items()
            if k.startswith("eval.") and isinstance(v, dict) and "score" in v}


def headline_metrics(rec: ModelRecord, limit: int = 3) -> list[tuple[str, str]]:
    """A few figures for the models table: evaluation scores first, then other numbers."""
    out: list[tuple[str, str]] = []
    for key, summary in eval_summaries(rec).items():
        if isinstance(summary.get("score"), int | float):
            out.append((f"{summary.get('primary_metric', 'score')} ({key.split('.', 2)[-1]})", fmt(summary["score"])))
    for key, value in (rec.metrics or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((key, fmt(value)))
    return out[:limit]


def filter_models(records: list[ModelRecord], q: str = "", fmt_: str = "") -> list[ModelRecord]:
    words = q.lower().split()
    out = []
    for r in records:
        hay = " ".join([r.ref, r.format, *r.aliases, str((r.recipe or {}).get("kind", ""))]).lower()
        if all(w in hay for w in words) and (not fmt_ or r.format == fmt_):
            out.append(r)
    return sorted(out, key=lambda r: (r.name, -r.version))


def children(store: ModelStore, rec: ModelRecord) -> list[ModelRecord]:
    return [r for r in store.list() if rec.ref in r.parents]


# -- formatting -----------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b.c`` → JSON text of the leaf (lists kept whole)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value, default=str, ensure_ascii=False)} if prefix else {}


# -- runs -----------------------------------------------------------------------------------
def run_counts(run: PipelineRun) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in run.steps.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    return counts


def gates(run: PipelineRun) -> list[dict[str, Any]]:
    out = []
    for s in run.steps.values():
        if s.kind == "gate":
            checks = s.outputs.get("checks") or []
            out.append({"name": s.name, "status": s.status, "passed": s.outputs.get("passed"), "checks": checks,
                        "error": s.error})
    return out


def gate_summary(run: PipelineRun) -> str:
    gs = gates(run)
    if not gs:
        return "-"
    if any(g["passed"] is False or g["status"] == "failed" for g in gs):
        return "failed"
    return "passed" if all(g["passed"] for g in gs) else "pending"


def models_in(value: Any, store: ModelStore) -> list[str]:
    """The store references among a step's outputs (to link them)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "model" and isinstance(v, str) and store.find(v) is not None:
                found.append(v)
    return found


@dataclass(frozen=True)
class Diff:
    name: str
    a: str
    b: str
    changed: bool


def compare(a: PipelineRun, b: PipelineRun) -> dict[str, list[Diff]]:
    """Settings (variables and each step's resolved settings), steps and metrics of two runs."""
    sa = {**{f"vars.{k}": v for k, v in flatten(a.vars).items()},
          **{f"{n}.{k}": v for n, s in a.steps.items() for k, v in flatten(s.settings).items()}}
    sb = {**{f"vars.{k}": v for k, v in flatten(b.vars).items()},
          **{f"{n}.{k}": v for n, s in b.steps.items() for k, v in flatten(s.settings).items()}}
    settings = [Diff(k, sa.get(k, "-"), sb.get(k, "-"), sa.get(k) != sb.get(k))
                for k in dict.fromkeys([*sa, *sb])]
    steps, metrics = compare_runs(a, b)
    return {"settings": settings,
            "steps": [Diff(r.name, r.a, r.b, r.changed) for r in steps],
            "metrics": [Diff(r.name, r.a, r.b, r.changed) for r in metrics]}


# -- evaluations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRow:
    ref: str
    summary: dict[str, Any]

    @property
    def ci(self) -> tuple[float, float] | None:
        ci = self.summary.get("ci")
        return (float(ci[0]), float(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 else None


def evaluations(store: ModelStore, refs: list[str] | None = None) -> dict[str, list[EvalRow]]:
    """Every stored evaluation, grouped by ``eval.<task>.<dataset>`` (models side by side)."""
    groups: dict[str, list[EvalRow]] = {}
    for rec in store.list():
        if refs and rec.ref not in refs:
            continue
        for key, summary in eval_summaries(rec).items():
            groups.setdefault(key, []).append(EvalRow(rec.ref, summary))
    return dict(sorted(groups.items()))


def interval_chart(rows: list[EvalRow], metric: str, width: int = 560) -> str:
    """Score per model with its confidence interval as a whisker (0..1 axis when scores fit)."""
    row_h, left, right, top = 30, 170, 60, 26
    height = top + row_h * len(rows) + 30
    values = [v for r in rows for v in ([r.summary.get("score") or 0.0] + list(r.ci or ()))]
    x_max = 1.0 if all(0 <= v <= 1 for v in values) else max(values, default=1.0) * 1.1 or 1.0
    pw = width - left - right

    def sx(v: float) -> float:
        return left + pw * max(0.0, v) / x_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ci-chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(metric)} with confidence intervals">',
           f'<g {svg.FONT} fill="#444">']
    for i in range(6):
        gx = x_max * i / 5
        out.append(f'<line x1="{sx(gx):.1f}" y1="{top - 6}" x2="{sx(gx):.1f}" y2="{height - 24}" stroke="#eee"/>')
        out.append(f'<text x="{sx(gx):.1f}" y="{height - 10}" text-anchor="middle">{gx:.3g}</text>')
    out.append(f'<text x="{left}" y="14">{escape(metric)} (whiskers: confidence interval)</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h + row_h / 2
        color = svg.PALETTE[i % len(svg.PALETTE)]
        score = r.summary.get("score")
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(svg._short(r.ref))}</text>')
        if r.ci:
            lo, hi = r.ci
            out.append(f'<line class="ci" x1="{sx(lo):.1f}" y1="{y:.1f}" x2="{sx(hi):.1f}" y2="{y:.1f}" '
                       f'stroke="{color}" stroke-width="2"/>')
            for v in (lo, hi):
                out.append(f'<line x1="{sx(v):.1f}" y1="{y - 6:.1f}" x2="{sx(v):.1f}" y2="{y + 6:.1f}" '
                           f'stroke="{color}" stroke-width="2"/>')
        if isinstance(score, int | float):
            ci_text = f" [{r.ci[0]:.3f}, {r.ci[1]:.3f}]" if r.ci else ""
            out.append(f'<circle class="score" cx="{sx(score):.1f}" cy="{y:.1f}" r="5" fill="{color}">'
                       f"<title>{escape(r.ref)}: {score:.3f}{ci_text}</title></circle>")
            out.append(f'<text x="{width - right + 6}" y="{y + 4:.1f}">{score:.3f}</text>')
    out.append("</g></svg>")
    return "".join(out)


def eval_bars(rows: list[EvalRow], key: str, unit: str) -> str | None:
    items = [(r.ref, float(r.summary[key])) for r in rows if isinstance(r.summary.get(key), int | float)]
    return svg.bars(items, unit) if items else None
