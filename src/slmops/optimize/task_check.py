"""The task metric a conversion must keep: which test set to use, and the source-vs-result delta.

The test set comes from ``--eval-data`` (a file or ``builtin:NAME``), else from the source's
lineage, nearest first (the source record, then its parents): an evaluation recorded in the
store (``slmops eval`` writes ``eval.<task>.<dataset>`` with the data it used; the latest one
wins), else the ``eval_data`` a fine-tune or distillation recipe names, scored with the
distillation's task (``generation``, i.e. ROUGE-L against the gold answer, when the recipe
names none). Without one, a conversion is checked on perplexity only.

Both models are scored by :func:`slmops.evaluate.evaluate` (the one place evaluation numbers
come from), greedy, on the same records; nothing is written to the store by the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError
from slmops.models.store import ModelRecord, ModelStore

GENERIC_TASK = "generation"
MAX_LINEAGE_DEPTH = 4


@dataclass(frozen=True)
class TaskCheck:
    """A test set to score source and result on, and where it came from."""

    data: str  # a file path or builtin:NAME
    task: str
    origin: str  # e.g. "--eval-data", "eval.classification.support-tickets of base:1"


@dataclass(frozen=True)
class TaskDelta:
    """The task metric of source and result on one test set (scores in [0, 1], BLEU 0-100)."""

    task: str
    dataset: str
    data: str
    origin: str
    metric: str
    records: int
    source_score: float | None
    score: float | None
    error: str | None = None

    @property
    def delta_points(self) -> float | None:
        """Result minus source in points (percentage points for [0, 1] metrics)."""
        if self.score is None or self.source_score is None:
            return None
        scale = 1.0 if self.metric == "bleu" else 100.0
        return scale * (self.score - self.source_score)

    def to_dict(self) -> dict[str, Any]:
        d = self.delta_points
        return {**asdict(self), "delta_points": None if d is None else round(d, 3)}


def explicit(eval_data: str, eval_task: str | None) -> TaskCheck:
    """``--eval-data FILE|builtin:NAME`` (with ``--eval-task``, or the built-in set's own task)."""
    from slmops.evaluate.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX
    from slmops.evaluate.tasks import get_task

    if eval_data.startswith(BUILTIN_PREFIX):
        name = eval_data[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_DATASETS:
            raise SlmopsError(
                f"--eval-data: unknown built-in test set {name!r}.",
                f"Use one of: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)}, or a JSONL file.",
            )
        task = eval_task or BUILTIN_DATASETS[name].task
    else:
        if not Path(eval_data).expanduser().is_file():
            raise SlmopsError(f"--eval-data: {eval_data} does not exist.", "Give a JSONL/JSON/CSV test set.")
        if eval_task is None:
            raise SlmopsError(
                f"--eval-data {eval_data} needs --eval-task (which metric to score it with).",
                "e.g. --eval-task classification; `slmops eval --help` lists the tasks.",
            )
        task = eval_task
    get_task(task)  # a clear error for an unknown task
    return TaskCheck(eval_data, task, "--eval-data")


def from_lineage(record: ModelRecord | None, store: ModelStore) -> TaskCheck | None:
    """The nearest test set in ``record``'s lineage (itself first, then its parents), if any."""
    seen: set[str] = set()
    level = [record] if record is not None else []
    for _ in range(MAX_LINEAGE_DEPTH):
        parents: list[ModelRecord] = []
        for rec in level:
            if rec.ref in seen:
                continue
            seen.add(rec.ref)
            check = _recorded_eval(rec) or _recipe_eval(rec)
            if check is not None:
                return check
            parents += [p for p in (store.find(ref) for ref in rec.parents) if p is not None]
        level = parents
    return None


def _recorded_eval(rec: ModelRecord) -> TaskCheck | None:
    """The latest ``eval.<task>.<dataset>`` result on ``rec`` whose data file still exists."""
    found = []
    for key, value in rec.metrics.items():
        if not key.startswith("eval.") or not isinstance(value, dict) or not value.get("data"):
            continue
        if Path(value["data"]).is_file():
            found.append((str(value.get("evaluated_at") or ""), key, value["data"]))
    if not found:
        return None
    _, key, data = max(found)
    return TaskCheck(data, key.split(".")[1], f"{key} of {rec.ref}")


def _recipe_eval(rec: ModelRecord) -> TaskCheck | None:
    """The ``eval_data`` of a fine-tune/distillation recipe, with the distillation's task."""
    eval_data = rec.recipe.get("eval_data") or {}
    paths = [p for p in eval_data if Path(p).is_file()] if isinstance(eval_data, dict) else []
    if not paths:
        return None
    from slmops.evaluate.tasks import TASKS

    distill = rec.recipe.get("distill") or rec.metrics.get("distill") or {}
    task = distill.get("task") if isinstance(distill, dict) else None
    task = task if isinstance(task, str) and task in TASKS else GENERIC_TASK
    return TaskCheck(paths[0], task, f"eval_data of {rec.ref} ({rec.recipe.get('kind', 'recipe')})")


def measure(
    check: TaskCheck, source_ref: str, result_path: Path, store: ModelStore, say: Callable[[str], None]
) -> TaskDelta:
    """Score ``source_ref`` and the converted model at ``result_path`` on ``check``'s test set."""
    from slmops.evaluate import EvalConfig, evaluate

    say(f"measuring {check.task} on {check.data} ({check.origin}): source, then result")
    config = EvalConfig((source_ref, str(result_path)), check.data, check.task, record=False, latency_samples=0)
    report = evaluate(config, store=store, progress=say)
    src, res = report.models
    metric = report.primary_metric
    errors = [f"{label}: {m.error}" for label, m in (("source", src), ("result", res)) if not m.ok]
    return TaskDelta(
        task=check.task, dataset=report.dataset, data=report.data, origin=check.origin, metric=metric,
        records=len(report.scored_items), source_score=src.metrics.get(metric) if src.ok else None,
        score=res.metrics.get(metric) if res.ok else None, error="; ".join(errors) or None,
    )
