"""Side-by-side comparison: the first model that ran is the baseline.

The percentages users quote are defined once, here:

* ``quality_retention_pct``        = 100 × candidate score / baseline score (primary metric)
* ``inference_time_reduction_pct`` = 100 × (1 − candidate time / baseline time), time = p50
  single-request latency (or, without latency samples, batched seconds per request)
* ``memory_reduction_pct``         = 100 × (1 − candidate / baseline memory delta (load + run))
* ``size_reduction_pct``           = 100 × (1 − candidate / baseline size on disk)

Positive reductions mean the candidate is cheaper. ``quality_delta_ci`` is a paired
bootstrap interval of the per-record difference; ``significant`` says it excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from slmops.evaluate.bootstrap import paired_bootstrap_delta
from slmops.evaluate.results import Comparison, ModelComparison, ModelResult


def ratio(new: float | None, base: float | None) -> float | None:
    """``new / base``; ``None`` when either is unknown or the base is 0."""
    if new is None or base is None or base == 0:
        return None
    return new / base


def reduction_pct(base: float | None, new: float | None) -> float | None:
    """How much smaller ``new`` is than ``base``, in percent (negative: it grew)."""
    r = ratio(new, base)
    return None if r is None else 100.0 * (1.0 - r)


def retention_pct(base: float | None, new: float | None) -> float | None:
    """``new`` as a percentage of ``base`` (100 = same quality)."""
    r = ratio(new, base)
    return None if r is None else 100.0 * r


def time_per_request_ms(model: ModelResult) -> float | None:
    perf = model.perf
    if perf is None:
        return None
    if perf.latency_p50_ms is not None:
        return perf.latency_p50_ms
    return perf.generation_seconds * 1000 / perf.requests if perf.requests else None


def _memory(model: ModelResult) -> float | None:
    return model.perf.memory_delta_mb if model.perf else None


def _throughput(model: ModelResult) -> float | None:
    return model.perf.tokens_per_second if model.perf else None


def compare_models(models: Sequence[ModelResult], primary: str, *, seed: int = 0) -> Comparison:
    """Compare every model that ran with the first one that ran (the baseline gets a row of
    zero deltas and 100% retention, so tables line up)."""
    ran = [m for m in models if m.ok]
    if not ran:
        return Comparison(None, primary)
    base = ran[0]
    rows = []
    for cand in ran:
        b, c = base.metrics.get(primary), cand.metrics.get(primary)
        delta_ci = None
        if primary in base.per_record and primary in cand.per_record and base.per_record[primary]:
            delta_ci = paired_bootstrap_delta(base.per_record[primary], cand.per_record[primary], seed=seed)
        judge_delta = None
        if base.judge and cand.judge and base.judge.mean is not None and cand.judge.mean is not None:
            judge_delta = cand.judge.mean - base.judge.mean
        rows.append(
            ModelComparison(
                ref=cand.ref,
                quality=c,
                quality_delta=None if b is None or c is None else c - b,
                quality_delta_ci=delta_ci,
                significant=None if delta_ci is None else delta_ci.excludes_zero,
                quality_retention_pct=retention_pct(b, c),
                metric_deltas={k: v - base.metrics[k] for k, v in cand.metrics.items() if k in base.metrics},
                time_ratio=ratio(time_per_request_ms(cand), time_per_request_ms(base)),
                inference_time_reduction_pct=reduction_pct(time_per_request_ms(base), time_per_request_ms(cand)),
                throughput_ratio=ratio(_throughput(cand), _throughput(base)),
                memory_ratio=ratio(_memory(cand), _memory(base)),
                memory_reduction_pct=reduction_pct(_memory(base), _memory(cand)),
                size_ratio=ratio(cand.size_bytes, base.size_bytes),
                size_reduction_pct=reduction_pct(base.size_bytes, cand.size_bytes),
                judge_delta=judge_delta,
            )
        )
    return Comparison(base.ref, primary, rows)
