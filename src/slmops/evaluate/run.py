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
from slmops.engines.base import Engine, GenerationParams, GenerationRequest
from slmops.errors import DataError, SlmopsError
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.compare import compare_models
from slmops.evaluate.judge import judge_answers
from slmops.evaluate.metrics import Perplexity, perplexity
from slmops.evaluate.perf import Latency, PerfStats, RssSampler, measure_latency, release_memory
from slmops.evaluate.results import EvalReport, ModelResult
from slmops.evaluate.scoring import score_outputs
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
MB = 1024 * 1024


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
        if options.get(key) is not None:
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


# -- one model -----------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SlmopsError) else f"{type(exc).__name__}: {exc}"


def _model_info(ref: str, store: ModelStore) -> dict[str, Any]:
    if ref.startswith(("http://", "https://")):
        return {"label": ref, "format": "remote"}
    from slmops.models.artifacts import inspect
    from slmops.models.resolve import resolve
    from slmops.models.store import folder_size

    resolved = resolve(ref, store)
    if resolved.record is not None:
        rec = resolved.record
        return {"label": rec.ref, "store_ref": rec.ref, "format": rec.format, "size_bytes": rec.size_bytes,
                "parameters": rec.parameters}
    return {"label": str(resolved.path), "format": resolved.format, "size_bytes": folder_size(resolved.path),
            "parameters": inspect(resolved.path)[1] or None}


def generate_robust(
    engine: Engine, requests: Sequence[GenerationRequest], batch_size: int, on_batch: Callable[[int], None]
) -> tuple[list[str | None], int, int]:
    """Answer in batches; a batch that fails is retried one request at a time, and a request
    that still fails gets ``None``. Returns ``(outputs, prompt_tokens, completion_tokens)``."""
    outputs: list[str | None] = []
    prompt_tokens = completion_tokens = 0
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        try:
            results = list(engine.generate(chunk))
        except SlmopsError:
            results = []
            for req in chunk:
                try:
                    results.append(engine.generate([req])[0])
                except SlmopsError:
                    results.append(None)
        for r in results:
            outputs.append(None if r is None else r.text)
            prompt_tokens += r.prompt_tokens if r else 0
            completion_tokens += r.completion_tokens if r else 0
        on_batch(len(outputs))
    return outputs, prompt_tokens, completion_tokens


def engine_perplexity(engine: Engine, text: str) -> tuple[Perplexity | None, str | None]:
    model, tokenizer = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
    if model is None or tokenizer is None:
        return None, f"perplexity needs a local PyTorch model (this is a {engine.name} engine)"
    try:
        return perplexity(model, tokenizer, text), None
    except ValueError as exc:
        return None, str(exc)


def evaluate_model(
    ref: str,
    items: Sequence[EvalItem],
    metrics: Sequence[str],
    labels: Sequence[str],
    config: EvalConfig,
    store: ModelStore,
    say: Progress,
    ppl_text: str | None = None,
) -> ModelResult:
    """Load, run, time and score one model on the scorable ``items``; never raises for a
    model problem (the result says ``failed`` and why)."""
    import time

    remote = ref.startswith(("http://", "https://"))
    requests = [i.request for i in items if i.request is not None]
    release_memory()
    sampler = RssSampler().start()
    t0 = time.perf_counter()
    engine: Engine | None = None
    try:
        say(f"loading {ref}")
        info = _model_info(ref, store)
        engine = open_engine(ref, store, threads=config.threads, progress=say)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        outputs, p_tok, c_tok = generate_robust(engine, requests, config.batch_size,
                                                lambda n: say(f"{ref}: {n}/{len(requests)} answered"))
        gen_s = time.perf_counter() - t1
        latency = measure_latency(engine, requests[: config.latency_samples]) if config.latency_samples else \
            Latency(0, None, None, None, None)
        ppl, ppl_err = engine_perplexity(engine, ppl_text) if ppl_text else (None, None)
    except Exception as exc:  # a broken model must not abort the others; the report says why
        say(f"{ref} failed: {_describe(exc)}")
        return ModelResult(ref, "failed", error=_describe(exc), label=ref)
    finally:
        if engine is not None:
            engine.close()
        engine = None
        sampler.stop()
        release_memory()
    scores = score_outputs(metrics, outputs, [i.gold for i in items], labels, seed=config.seed)
    mem = None if remote else (sampler.before / MB, sampler.peak / MB, (sampler.peak - sampler.before) / MB)
    perf = PerfStats(
        load_seconds=load_s, batch_size=config.batch_size, requests=len(requests), prompt_tokens=p_tok,
        completion_tokens=c_tok, generation_seconds=gen_s, tokens_per_second=c_tok / gen_s if gen_s > 0 else 0.0,
        latency_samples=latency.samples, latency_p50_ms=latency.p50_ms, latency_p95_ms=latency.p95_ms,
        ttft_p50_ms=latency.ttft_p50_ms, decode_tokens_per_second=latency.decode_tokens_per_second,
        rss_before_mb=mem[0] if mem else None, peak_rss_mb=mem[1] if mem else None,
        memory_delta_mb=mem[2] if mem else None,
    )
    return ModelResult(
        ref, "ok", label=info["label"], store_ref=info.get("store_ref"), format=info.get("format"),
        size_bytes=info.get("size_bytes"), parameters=info.get("parameters"), metrics=scores.aggregates,
        intervals=scores.intervals, confusion=scores.confusion, counts=scores.flag_counts(), perf=perf,
        perplexity=ppl, perplexity_error=ppl_err, per_record=scores.per_record, outputs=outputs,
        predictions=scores.predictions, flags=scores.flags,
    )


def _judge_all(
    config: EvalConfig, models: list[ModelResult], items: Sequence[EvalItem], store: ModelStore, say: Progress
) -> tuple[list[ModelResult], list[str]]:
    assert config.judge is not None
    say(f"loading judge {config.judge}")
    try:
        engine = open_engine(config.judge, store, threads=config.threads, progress=say)
    except Exception as exc:  # the automatic metrics stand on their own without the judge
        return models, [f"judge {config.judge} could not be opened: {_describe(exc)}"]
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
