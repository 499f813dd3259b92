"""One model's run: load it through ``open_engine``, answer the test set in batches, time
single requests, measure memory, score. Never raises for a model problem: the result says
``failed`` and why, so the other models still run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from slmops.engines import open_engine
from slmops.engines.base import Engine, GenerationRequest
from slmops.engines.batched import generate_batched
from slmops.errors import SlmopsError
from slmops.evaluate.metrics import Perplexity, perplexity
from slmops.evaluate.perf import Latency, PerfStats, RssSampler, measure_latency, release_memory
from slmops.evaluate.results import ModelResult
from slmops.evaluate.scoring import score_outputs
from slmops.evaluate.tasks import EvalItem
from slmops.models.store import ModelStore

Progress = Callable[[str], None]
MB = 1024 * 1024


def preload_runtime() -> None:
    """Import PyTorch and transformers before any measurement, so the first model's load
    time and memory delta do not include the libraries (hundreds of MB) every model shares."""
    import torch  # noqa: F401
    import transformers.generation.utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    import slmops.engines.torch_engine  # noqa: F401


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SlmopsError) else f"{type(exc).__name__}: {exc}"


def _failed(ref: str, exc: BaseException, say: Progress) -> ModelResult:
    say(f"{ref} failed: {describe(exc)}")
    return ModelResult(ref, "failed", error=describe(exc), label=ref)


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
    results = generate_batched(engine, requests, batch_size=batch_size, on_batch=on_batch)
    outputs = [None if r is None else r.text for r in results]
    prompt_tokens = sum(r.prompt_tokens for r in results if r is not None)
    completion_tokens = sum(r.completion_tokens for r in results if r is not None)
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
    config: Any,
    store: ModelStore,
    say: Progress,
    ppl_text: str | None = None,
) -> ModelResult:
    """Load, run, time and score one model on the scorable ``items`` (``config`` is the
    run's :class:`~slmops.evaluate.run.EvalConfig`)."""
    remote = ref.startswith(("http://", "https://"))
    requests = [i.request for i in items if i.request is not None]
    say(f"loading {ref}")
    try:
        info = _model_info(ref, store)  # resolves (pulling a built-in model on first use) before measuring
    except Exception as exc:  # a broken model must not abort the others; the report says why
        return _failed(ref, exc, say)
    release_memory()
    sampler = RssSampler().start()
    engine: Engine | None = None
    try:
        t0 = time.perf_counter()
        engine = open_engine(ref, store, threads=config.threads, progress=say)
        load_s = time.perf_counter() - t0
        if requests:  # one tiny untimed request, so lazy initialisation is not billed to the first batch
            generate_robust(engine, [replace(requests[0], params=replace(requests[0].params, max_tokens=1))], 1,
                            lambda _n: None)
        t1 = time.perf_counter()
        outputs, p_tok, c_tok = generate_robust(engine, requests, config.batch_size,
                                                lambda n: say(f"{ref}: {n}/{len(requests)} answered"))
        gen_s = time.perf_counter() - t1
        latency = measure_latency(engine, requests[: config.latency_samples]) if config.latency_samples else \
            Latency(0, None, None, None, None)
        sampler.stop()  # perplexity's long windows are not part of serving memory
        ppl, ppl_err = engine_perplexity(engine, ppl_text) if ppl_text else (None, None)
    except Exception as exc:
        return _failed(ref, exc, say)
    finally:
        sampler.stop()
        if engine is not None:
            engine.close()
        engine = None
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
