"""``evaluate(refs, data, task) -> EvalReport``: the one place evaluation numbers come from.

Reads top to bottom: validate the config, read and prepare every record (records that cannot
be scored are counted, not fatal), then for each model: load it through ``open_engine``,
answer the test set in batches, time single requests, score, and release it; a model that
fails to load or crashes is reported as failed and the others still run. Then the judge (if
any), the comparison against the first model, the reports, and the store metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmops.data.records import read_located
from slmops.engines import open_engine
from slmops.engines.base import GenerationParams
from slmops.errors import DataError, SlmopsError
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.compare import compare_models
from slmops.evaluate.judge import judge_answers
from slmops.evaluate.model import describe, evaluate_model, preload_runtime
from slmops.evaluate.results import EvalReport, ModelResult
from slmops.evaluate.tasks import (
    LABEL_METRICS,
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


@dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation needs; field = CLI flag = pipeline YAML key."""

    refs: tuple[str, ...]
    data: str
    task: str
    labels: tuple[str, ...] = ()
    target_field: str = "answer"
    input_field: str = "prompt"
    metrics: tuple[str, ...] = ()
    perplexity: str | None = None
    judge: str | None = None
    max_tokens: int | None = None
    batch_size: int = 8
    limit: int | None = None
    latency_samples: int = 5
    raw: bool = False
    system: str | None = None
    threads: int | None = None
    seed: int = 0
    report_dir: str | None = None
    record: bool = True

    def validate(self) -> None:
        """Raise one error listing every problem, before any work starts."""
        problems = []
        if not self.refs:
            problems.append("give at least one model reference")
        for name in ("batch_size", "limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if self.latency_samples < 0:
            problems.append(f"latency_samples must be >= 0 (got {self.latency_samples})")
        if self.perplexity and not Path(self.perplexity).is_file():
            problems.append(f"perplexity file {self.perplexity} does not exist")
        if problems:
            raise SlmopsError("Invalid evaluation settings: " + "; ".join(problems) + ".",
                              "Example: slmops eval MODEL --data test.jsonl --task classification.")
        get_task(self.task)


def evaluate(
    refs: Sequence[str],
    data: str | Path,
    task: str,
    *,
    store: ModelStore | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> EvalReport:
    """Evaluate one or more models on a test set; the first model is the baseline.

    ``options`` are :class:`EvalConfig` fields (``labels`` may be ``"a,b,c"``).
    """
    if isinstance(options.get("labels"), str):
        options["labels"] = parse_labels(options["labels"])
    for key in ("labels", "metrics"):
        if options.get(key) is None:
            options.pop(key, None)
        else:
            options[key] = tuple(options[key])
    for key in ("perplexity", "report_dir"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    config = EvalConfig(refs=tuple(refs), data=str(data), task=task, **options)
    return run_eval(config, store=store, progress=progress)


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


def run_eval(config: EvalConfig, *, store: ModelStore | None = None, progress: Progress | None = None) -> EvalReport:
    config.validate()
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
        config={**asdict(config), "refs": list(config.refs), "warnings": warnings},
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
