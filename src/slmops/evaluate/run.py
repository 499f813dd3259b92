"""``evaluate(EvalConfig(refs, data, task)) -> EvalReport``: the one place evaluation numbers come from.

Reads top to bottom: validate the config, read and prepare every record (records that cannot
be scored are counted, not fatal), then for each model: load it through ``open_engine``,
answer the test set in batches, time single requests, score, and release it; a model that
fails to load or crashes is reported as failed and the others still run. Then the judge (if
any), the comparison against the first model, the reports, and the store metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, ClassVar

from pydantic import Field, field_validator

from slmops.configs import CommandConfig
from slmops.data.records import read_located
from slmops.engines import open_engine
from slmops.engines.base import GenerationParams
from slmops.errors import DataError
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.compare import compare_models
from slmops.evaluate.judge import judge_answers
from slmops.evaluate.model import describe, evaluate_model, preload_runtime
from slmops.evaluate.results import EvalReport, ModelResult
from slmops.evaluate.tasks import (
    ALL_METRICS,
    LABEL_METRICS,
    TASKS,
    EvalItem,
    build_item,
    get_task,
    infer_labels,
    issue_counts,
    parse_labels,
    resolve_metrics,
)
from slmops.models.store import ModelStore

Progress = Callable[[str], None]


class EvalConfig(CommandConfig):
    """Everything one evaluation needs; field = CLI flag = pipeline YAML key."""

    what: ClassVar[str] = "evaluation settings"
    example: ClassVar[str] = "Example: slmops eval MODEL --data test.jsonl --task classification."

    refs: tuple[str, ...] = Field(description="Models to evaluate: name, name:version, name@alias, a path, or "
                                              "URL#model. The first is the baseline.")
    data: str = Field(description="Test set (JSONL/JSON/CSV/Parquet), or builtin:support-tickets.")
    task: str = Field(description=f"Task type: {', '.join(TASKS)}.")
    labels: tuple[str, ...] = Field((), description="Label set for classification/NLI, comma-separated "
                                                    "(default: the gold labels seen).")
    target_field: str = Field("answer", description="Field holding the gold answer.")
    input_field: str = Field("prompt", description="Field holding the input text (records with 'messages' use those).")
    metrics: tuple[str, ...] = Field((), description=f"Metrics, comma-separated or repeated "
                                                     f"({', '.join(ALL_METRICS)}); the list for --task generation, "
                                                     "extra metrics for the other tasks.")
    perplexity: str | None = Field(None, description="Also measure perplexity on this text file "
                                                      "(local PyTorch models).")
    judge: str | None = Field(None, description="Model or URL#model that scores each answer 1-10 with a rubric "
                                                "(beside the metrics).")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens per answer (default: per task, 16 for "
                                                           "classification).")
    batch_size: int = Field(8, ge=1, description="Records per generation batch.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N records.")
    latency_samples: int = Field(5, ge=0, description="Requests timed one at a time for latency p50/p95 (0 = skip).")
    raw: bool = Field(False, description="Send prompts without the chat template (base models).")
    system: str | None = Field(None, description="System prompt for chat models.")
    threads: int | None = Field(None, description="CPU threads for inference (default: all cores).")
    seed: int = Field(0, description="Seed for generation and the bootstrap intervals.")
    report_dir: str | None = Field(None, description="Where report.json/.md/.html go (default: "
                                                     "$SLMOPS_HOME/evals/<time>-<task>-<data>).")
    record: bool = Field(True, description="Record the results in the store's model metrics.")

    @field_validator("labels", "metrics", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``"a,b,c"`` (as the flag takes it) is the list ``a``, ``b``, ``c``; ``None`` is none."""
        if value is None:
            return ()
        return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value

    @field_validator("data", "perplexity", "report_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, PurePath) else value

    def problems(self) -> list[str]:
        problems = []
        if not self.refs:
            problems.append("give at least one model reference")
        if self.perplexity and not Path(self.perplexity).is_file():
            problems.append(f"perplexity file {self.perplexity} does not exist")
        return problems


def prepare(config: EvalConfig) -> tuple[Path, str, tuple[str, ...], tuple[str, ...], list[EvalItem]]:
    """Read the data and build every item: ``(path, dataset, labels, metrics, items)``."""
    spec = get_task(config.task)
    path, dataset = resolve_data(config.data)
    located = read_located(path)[: config.limit or None]
    labels = parse_labels(config.labels) or spec.default_labels
    if not labels and (spec.uses_labels or any(m in LABEL_METRICS for m in config.metrics)):
        labels = infer_labels(located, config.target_field, str(path))
    metrics = resolve_metrics(spec, config.metrics, labels)
    label_set = labels if any(m in LABEL_METRICS for m in metrics) else ()
    params = GenerationParams(max_tokens=config.max_tokens or spec.max_tokens, temperature=0.0, seed=config.seed)
    items = [
        build_item(n, where, rec, spec, params, labels=label_set, target_field=config.target_field,
                   input_field=config.input_field, raw=config.raw, system=config.system)
        for n, (where, rec) in enumerate(located)
    ]
    if not any(i.scorable for i in items):
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in issue_counts(items).items() if v)
        raise DataError(
            f"{path}: none of the {len(items)} records can be scored ({counts}).",
            f"Records need an input ({config.input_field!r} or 'messages'; --input-field) and a gold answer "
            f"({config.target_field!r}; --target-field){' within --labels' if label_set else ''}.",
        )
    return path, dataset, label_set, metrics, items


def evaluate(config: EvalConfig, *, store: ModelStore | None = None, progress: Progress | None = None) -> EvalReport:
    """Evaluate ``config.refs`` on a test set; the first model is the baseline."""
    # the config checked itself when it was built; prepare() checks the task
    store = store or ModelStore()
    say = progress or (lambda _msg: None)
    path, dataset, labels, metrics, items = prepare(config)
    scorable = [i for i in items if i.scorable]
    say(f"{len(scorable)} of {len(items)} records scorable; task {config.task}, metrics {', '.join(metrics)}")
    ppl_text = Path(config.perplexity).read_text(encoding="utf-8") if config.perplexity else None
    if any(not r.startswith(("http://", "https://")) for r in config.refs):
        preload_runtime()
    models = [evaluate_model(ref, scorable, metrics, labels, config, store, say, ppl_text) for ref in config.refs]
    warnings: list[str] = []
    if config.judge:
        models, warnings = _judge_all(config, models, scorable, store, say)
    report = EvalReport(
        task=config.task, dataset=dataset, data=str(path), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        primary_metric=metrics[0], metrics=metrics, labels=labels,
        config={**config.model_dump(), "refs": list(config.refs), "warnings": warnings},
        items=items, models=models, comparison=compare_models(models, metrics[0], seed=config.seed),
    )
    if config.report_dir:
        from slmops.evaluate.report import write_reports

        report = write_reports(report, Path(config.report_dir))
    if config.record:
        for m in models:
            if m.ok and m.store_ref:
                store.update_metrics(m.store_ref, {report.store_key: {
                    **m.summary(report.primary_metric), "evaluated_at": report.created_at, "data": str(path),
                    "report": report.report_files.get("json")}})
    return report


def default_report_dir(store: ModelStore, task: str, dataset: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return store.home / "evals" / f"{stamp}-{task}-{dataset}"


def _judge_all(
    config: EvalConfig, models: list[ModelResult], items: Sequence[EvalItem], store: ModelStore, say: Progress
) -> tuple[list[ModelResult], list[str]]:
    assert config.judge is not None
    say(f"loading judge {config.judge}")
    try:
        engine = open_engine(config.judge, store, threads=config.threads, progress=say)
    except Exception as exc:  # the automatic metrics stand on their own without the judge
        return models, [f"judge {config.judge} could not be opened: {describe(exc)}"]
    questions = [i.question for i in items]
    references = [str(i.gold[0] if isinstance(i.gold, list) else i.gold) for i in items]
    judged = []
    with engine:
        for m in models:
            if not m.ok:
                judged.append(m)
                continue
            say(f"judging {m.ref} with {config.judge}")
            answers = [o or "" for o in m.outputs]
            result = judge_answers(engine, config.judge, questions, answers, references,
                                   batch_size=config.batch_size, seed=config.seed)
            judged.append(replace(m, judge=result))
    return judged, []
