"""Teacher versus student(s) on a test set, through :func:`slmops.evaluate.evaluate`.

The teacher is the baseline (first model), so the evaluate module's comparison already holds
the percentages users quote; this module picks them out per student:

* **inference time reduction** = 1 − student / teacher p50 single-request latency
* **memory reduction**         = 1 − student / teacher memory (load + run, resident set)
* **quality retention**        = student / teacher primary metric (accuracy for classification)
* **size reduction**           = 1 − student / teacher size on disk
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from slmops.errors import SlmopsError
from slmops.evaluate import EvalConfig, EvalReport, evaluate
from slmops.evaluate.compare import time_per_request_ms
from slmops.models.store import ModelStore


@dataclass(frozen=True)
class StudentSummary:
    ref: str
    ok: bool
    error: str | None = None
    quality: float | None = None
    teacher_quality: float | None = None
    quality_retention_pct: float | None = None
    inference_time_reduction_pct: float | None = None
    memory_reduction_pct: float | None = None
    size_reduction_pct: float | None = None
    throughput_ratio: float | None = None
    latency_ms: float | None = None
    memory_mb: float | None = None
    size_bytes: int | None = None
    parameters: int | None = None

    def headline(self, metric: str) -> str:
        """``inference time -85.0%, memory -95.0%, keeps 92.0% of the teacher's accuracy``."""
        if not self.ok:
            return f"{self.ref}: failed ({self.error})"
        parts = [f"inference time {_signed(self.inference_time_reduction_pct)}",
                 f"memory {_signed(self.memory_reduction_pct)}", f"size {_signed(self.size_reduction_pct)}"]
        keeps = "-" if self.quality_retention_pct is None else f"{self.quality_retention_pct:.1f}%"
        return f"{self.ref}: {', '.join(parts)}; keeps {keeps} of the teacher's {metric}"


def _signed(reduction: float | None) -> str:
    """A reduction of 85% reads as ``-85.0%`` (smaller), a growth as ``+x%``."""
    return "n/a" if reduction is None else f"{-reduction:+.1f}%"


@dataclass(frozen=True)
class DistillReport:
    teacher: str
    task: str
    primary_metric: str
    students: list[StudentSummary]
    eval: EvalReport

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "task": self.task, "primary_metric": self.primary_metric,
                "students": [asdict(s) for s in self.students], "report_files": self.eval.report_files,
                "records": self.eval.record_counts()}


def summarize(report: EvalReport, teacher: str, students: Sequence[str]) -> list[StudentSummary]:
    base = report.model(teacher)
    if not base.ok:
        raise SlmopsError(f"The teacher {teacher} could not be evaluated: {base.error}.",
                          "Check the teacher reference; the report compares every student with it.")
    primary = report.primary_metric
    out = []
    for ref in students:
        m = report.model(ref)
        if not m.ok or report.comparison is None:
            out.append(StudentSummary(ref, False, m.error))
            continue
        row = report.comparison.row(ref)
        out.append(StudentSummary(
            ref, True, quality=m.metrics.get(primary), teacher_quality=base.metrics.get(primary),
            quality_retention_pct=row.quality_retention_pct,
            inference_time_reduction_pct=row.inference_time_reduction_pct,
            memory_reduction_pct=row.memory_reduction_pct, size_reduction_pct=row.size_reduction_pct,
            throughput_ratio=row.throughput_ratio, latency_ms=time_per_request_ms(m),
            memory_mb=m.perf.memory_delta_mb if m.perf else None, size_bytes=m.size_bytes, parameters=m.parameters,
        ))
    return out


def distill_report(
    config: EvalConfig, *, store: ModelStore | None = None, progress: Callable[[str], None] | None = None
) -> DistillReport:
    """Evaluate the teacher (``config.refs[0]``, the baseline) and each student (the other refs)
    as ``config`` says, and summarise the students against the teacher."""
    teacher, students = config.refs[0], list(config.refs[1:])
    if not students:
        raise SlmopsError("Give at least one student to compare with the teacher.", "Add --student REF.")
    if teacher in students or len(set(students)) != len(students):
        raise SlmopsError("The teacher and the students must be different models, each named once.")
    report = evaluate(config, store=store, progress=progress)
    return DistillReport(teacher, config.task, report.primary_metric, summarize(report, teacher, students), report)
