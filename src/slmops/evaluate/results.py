"""Typed results of an evaluation and their stable JSON shape (``SCHEMA_VERSION``).

Gates, the pipeline, distillation and optimize read the JSON, so keys only get added;
renaming or removing one bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from slmops.evaluate.bootstrap import ConfidenceInterval
from slmops.evaluate.judge import JudgeResult
from slmops.evaluate.metrics import Confusion, Perplexity
from slmops.evaluate.perf import PerfStats
from slmops.evaluate.tasks import EvalItem

SCHEMA_VERSION = 1
REPORT_KIND = "slmops.eval"


@dataclass(frozen=True)
class ModelResult:
    """One model's run. ``status == "failed"`` carries ``error`` and no scores."""

    ref: str
    status: Literal["ok", "failed"]
    error: str | None = None
    label: str = ""
    store_ref: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, ConfidenceInterval] = field(default_factory=dict)
    confusion: Confusion | None = None
    counts: dict[str, int] = field(default_factory=dict)
    perf: PerfStats | None = None
    perplexity: Perplexity | None = None
    perplexity_error: str | None = None
    judge: JudgeResult | None = None
    per_record: dict[str, list[float]] = field(default_factory=dict)
    outputs: list[str | None] = field(default_factory=list)
    predictions: list[str | None] = field(default_factory=list)
    flags: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self, primary: str) -> dict[str, Any]:
        """The compact dict recorded in the store under ``eval.<task>.<dataset>``."""
        perf = self.perf
        ci = self.intervals.get(primary)
        return {
            "schema_version": SCHEMA_VERSION,
            "primary_metric": primary,
            "score": self.metrics.get(primary),
            "ci": [ci.low, ci.high] if ci else None,
            "metrics": self.metrics,
            "records": len(self.outputs),
            "counts": self.counts,
            "latency_p50_ms": perf.latency_p50_ms if perf else None,
            "latency_p95_ms": perf.latency_p95_ms if perf else None,
            "tokens_per_second": perf.tokens_per_second if perf else None,
            "peak_rss_mb": perf.peak_rss_mb if perf else None,
            "memory_delta_mb": perf.memory_delta_mb if perf else None,
            "perplexity": self.perplexity.perplexity if self.perplexity else None,
            "judge_mean": self.judge.mean if self.judge else None,
        }

    def to_dict(self, items: list[EvalItem]) -> dict[str, Any]:
        records = []
        for k, item in enumerate(items if self.ok else []):
            rec: dict[str, Any] = {
                "index": item.index,
                "gold": item.gold,
                "output": self.outputs[k],
                "prediction": self.predictions[k] if self.predictions else None,
                "flag": self.flags[k] if self.flags else None,
                "scores": {m: v[k] for m, v in self.per_record.items()},
            }
            if self.judge:
                rec["judge_score"] = self.judge.scores[k]
            records.append(rec)
        return {
            "ref": self.ref,
            "status": self.status,
            "error": self.error,
            "label": self.label,
            "store_ref": self.store_ref,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "metrics": self.metrics,
            "ci": {m: ci.to_dict() for m, ci in self.intervals.items()},
            "confusion": self.confusion.to_dict() if self.confusion else None,
            "counts": self.counts,
            "perf": self.perf.to_dict() if self.perf else None,
            "perplexity": self.perplexity.to_dict() if self.perplexity else None,
            "perplexity_error": self.perplexity_error,
            "judge": self.judge.to_dict() if self.judge else None,
            "records": records,
        }


# the comparison's shape; :func:`slmops.evaluate.compare.compare_models` computes it
@dataclass(frozen=True)
class ModelComparison:
    ref: str
    quality: float | None
    quality_delta: float | None
    quality_delta_ci: ConfidenceInterval | None
    significant: bool | None
    quality_retention_pct: float | None
    metric_deltas: dict[str, float]
    time_ratio: float | None
    inference_time_reduction_pct: float | None
    throughput_ratio: float | None
    memory_ratio: float | None
    memory_reduction_pct: float | None
    size_ratio: float | None
    size_reduction_pct: float | None
    judge_delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quality_delta_ci"] = self.quality_delta_ci.to_dict() if self.quality_delta_ci else None
        return data


@dataclass(frozen=True)
class Comparison:
    baseline: str | None
    primary_metric: str
    rows: list[ModelComparison] = field(default_factory=list)

    def row(self, ref: str) -> ModelComparison:
        return next(r for r in self.rows if r.ref == ref)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "primary_metric": self.primary_metric,
                "rows": [r.to_dict() for r in self.rows]}


@dataclass(frozen=True)
class EvalReport:
    task: str
    dataset: str
    data: str
    created_at: str
    primary_metric: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...]
    config: dict[str, Any]
    items: list[EvalItem]
    models: list[ModelResult]
    comparison: Comparison | None
    report_files: dict[str, str] = field(default_factory=dict)

    @property
    def store_key(self) -> str:
        return f"eval.{self.task}.{self.dataset}"

    @property
    def scored_items(self) -> list[EvalItem]:
        return [i for i in self.items if i.scorable]

    def record_counts(self) -> dict[str, int]:
        from slmops.evaluate.tasks import issue_counts

        return {"total": len(self.items), "scored": len(self.scored_items), **issue_counts(self.items)}

    def model(self, ref: str) -> ModelResult:
        return next(m for m in self.models if m.ref == ref)

    def to_dict(self) -> dict[str, Any]:
        scored = self.scored_items
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": REPORT_KIND,
            "created_at": self.created_at,
            "task": self.task,
            "dataset": self.dataset,
            "data": self.data,
            "store_key": self.store_key,
            "primary_metric": self.primary_metric,
            "metrics": list(self.metrics),
            "labels": list(self.labels),
            "config": self.config,
            "records": self.record_counts(),
            "record_issues": [
                {"index": i.index, "where": i.where, "issue": i.issue, "detail": i.detail}
                for i in self.items if not i.scorable
            ],
            "models": [m.to_dict(scored) for m in self.models],
            "comparison": self.comparison.to_dict() if self.comparison is not None else None,
            "report_files": self.report_files,
        }
