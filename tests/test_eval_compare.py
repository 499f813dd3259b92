"""Bootstrap intervals, the comparison table's percentages, and judge-score parsing."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.evaluate.bootstrap import bootstrap_ci, bootstrap_items_ci, paired_bootstrap_delta
from slmops.evaluate.compare import compare_models, ratio, reduction_pct, retention_pct
from slmops.evaluate.judge import judge_request, parse_score
from slmops.evaluate.perf import PerfStats, percentile
from slmops.evaluate.results import ModelResult


# -- bootstrap -----------------------------------------------------------------------------
def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    true_p, trials, covered = 0.7, 60, 0
    for t in range(trials):
        sample = (rng.random(300) < true_p).astype(float)
        ci = bootstrap_ci(sample, seed=t, resamples=500)
        assert ci is not None and ci.low <= ci.estimate <= ci.high
        covered += ci.contains(true_p)
    assert covered / trials >= 0.85  # nominal 95%; allow for 60 trials of noise


def test_bootstrap_is_seeded_and_narrows_with_more_data():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0] * 5
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    small = bootstrap_ci(scores[:10], seed=0)
    big = bootstrap_ci(scores * 10, seed=0)
    assert (big.high - big.low) < (small.high - small.low)
    assert bootstrap_ci([], seed=0) is None
    median = bootstrap_ci([1, 2, 3, 4, 100], statistic=np.median, seed=0)
    assert median.estimate == 3
    with pytest.raises(ValueError):
        bootstrap_ci(scores, confidence=1.5)


def test_bootstrap_items_ci_for_a_non_mean_statistic():
    items = [("a", "a")] * 30 + [("b", "a")] * 10
    ci = bootstrap_items_ci(items, lambda xs: sum(p == g for p, g in xs) / len(xs), seed=0, resamples=300)
    assert ci.estimate == pytest.approx(0.75) and ci.contains(0.75)


def test_paired_delta_detects_a_real_drop_and_not_noise():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.8).astype(float)
    worse = base.copy()
    worse[np.flatnonzero(base)[:40]] = 0.0  # 40 right answers become wrong: delta = -0.2
    ci = paired_bootstrap_delta(base, worse, seed=0)
    assert ci.high < 0 and ci.excludes_zero and ci.contains(-0.2)
    same = paired_bootstrap_delta(base, base, seed=0)
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_delta([1.0], [1.0, 0.0])


# -- comparison ----------------------------------------------------------------------------
def test_percentage_helpers():
    assert reduction_pct(200, 50) == pytest.approx(75.0)
    assert reduction_pct(100, 150) == pytest.approx(-50.0)  # it grew
    assert retention_pct(0.8, 0.72) == pytest.approx(90.0)
    assert ratio(3, 2) == 1.5
    assert ratio(1, 0) is None and reduction_pct(None, 1) is None and retention_pct(0, 0.5) is None


def _perf(p50_ms: float, mem_mb: float, tps: float) -> PerfStats:
    return PerfStats(
        load_seconds=1.0, batch_size=8, requests=10, prompt_tokens=100, completion_tokens=50, generation_seconds=2.0,
        tokens_per_second=tps, latency_samples=5, latency_p50_ms=p50_ms, latency_p95_ms=p50_ms * 1.5,
        ttft_p50_ms=10.0, decode_tokens_per_second=tps, rss_before_mb=300.0, peak_rss_mb=300.0 + mem_mb,
        memory_delta_mb=mem_mb,
    )


def _model(ref: str, acc: list[float], p50: float, mem: float, size: int, tps: float) -> ModelResult:
    return ModelResult(ref, "ok", label=ref, size_bytes=size, parameters=1000,
                       metrics={"accuracy": float(np.mean(acc))}, per_record={"accuracy": acc},
                       perf=_perf(p50, mem, tps), outputs=["x"] * len(acc))


def test_compare_models_percentages_against_the_first_model():
    base = _model("big", [1.0] * 8 + [0.0] * 2, p50=200.0, mem=400.0, size=1000, tps=20.0)
    small = _model("small", [1.0] * 7 + [0.0] * 3, p50=50.0, mem=100.0, size=250, tps=60.0)
    failed = ModelResult("broken", "failed", error="boom")
    comp = compare_models([base, failed, small], "accuracy")
    assert comp.baseline == "big" and [r.ref for r in comp.rows] == ["big", "small"]
    row = comp.row("small")
    assert row.quality_delta == pytest.approx(-0.1)
    assert row.quality_retention_pct == pytest.approx(87.5)
    assert row.inference_time_reduction_pct == pytest.approx(75.0)
    assert row.time_ratio == pytest.approx(0.25)
    assert row.memory_reduction_pct == pytest.approx(75.0)
    assert row.size_reduction_pct == pytest.approx(75.0)
    assert row.throughput_ratio == pytest.approx(3.0)
    assert row.quality_delta_ci is not None and row.quality_delta_ci.contains(-0.1)
    assert comp.row("big").quality_retention_pct == pytest.approx(100.0)
    assert comp.to_dict()["rows"][1]["quality_delta_ci"]["estimate"] == pytest.approx(-0.1)


def test_baseline_is_the_first_model_that_ran():
    comp = compare_models([ModelResult("gone", "failed", error="x"),
                           _model("a", [1.0, 0.0], 10, 10, 10, 1), _model("b", [1.0, 1.0], 5, 5, 5, 2)], "accuracy")
    assert comp.baseline == "a"
    assert compare_models([ModelResult("gone", "failed")], "accuracy").rows == []


def test_percentile_matches_numpy():
    values = [12.0, 15.0, 11.0, 40.0, 13.0]
    assert percentile(values, 50) == 13.0
    assert percentile(values, 95) == pytest.approx(float(np.percentile(values, 95)))
    assert percentile([], 50) is None


# -- judge ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "want"),
    [
        ("Score: 7\nThe answer is mostly right.", 7.0),
        ("**Score:** 8", 8.0),
        ("Rating: 9 out of 10 - very good", 9.0),
        ("I'd rate it 6/10.", 6.0),
        ("10/10, perfect", 10.0),
        ("I would give it a 4.", 4.0),
        ("score = 7.5", 7.5),
        ("The answer lists 3 reasons. Score: 5", 5.0),  # a labelled score beats an earlier number
        ("Score: 0", None),
        ("Great answer!", None),
        ("", None),
    ],
)
def test_parse_score(reply, want):
    assert parse_score(reply) == want


def test_judge_prompt_carries_question_answer_and_reference():
    req = judge_request("What is 2+2?", "4", reference="Four")
    text = req.messages[-1].content
    assert "What is 2+2?" in text and "[Answer to rate]\n4" in text and "Four" in text and "1 to 10" in text
    assert "(empty)" in judge_request("Q", "  ").messages[-1].content
    assert "[Reference answer]" not in judge_request("Q", "A").messages[-1].content
