"""Seeded percentile-bootstrap confidence intervals over per-record scores.

``bootstrap_ci`` answers "how sure are we of this model's score"; ``paired_bootstrap_delta``
answers "is the candidate really different from the baseline": both models are resampled on
the same records, so the interval of the difference is much tighter than two separate ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class ConfidenceInterval:
    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = DEFAULT_RESAMPLES

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        return not self.contains(0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")


def _interval(estimate: float, stats: np.ndarray, confidence: float, resamples: int) -> ConfidenceInterval:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return ConfidenceInterval(float(estimate), float(low), float(high), confidence, resamples)


def bootstrap_ci(
    scores: Sequence[float],
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval | None:
    """Percentile interval of ``statistic`` (default: the mean) over resampled ``scores``.

    ``None`` for no scores. The same seed gives the same interval.
    """
    _check(confidence, resamples)
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    if statistic is None:
        return _interval(values.mean(), values[idx].mean(axis=1), confidence, resamples)
    stats = np.array([statistic(values[row]) for row in idx])
    return _interval(statistic(values), stats, confidence, resamples)


def bootstrap_items_ci(
    items: Sequence[Any],
    statistic: Callable[[list[Any]], float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval | None:
    """Like :func:`bootstrap_ci` for a statistic over whole records (e.g. macro-F1 over
    ``(prediction, gold)`` pairs), which is not a mean of per-record scores."""
    _check(confidence, resamples)
    if not items:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(resamples, len(items)))
    stats = np.array([statistic([items[i] for i in row]) for row in idx])
    return _interval(statistic(list(items)), stats, confidence, resamples)


def paired_bootstrap_delta(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval | None:
    """Interval of ``mean(candidate) - mean(baseline)`` resampling records jointly.

    The two lists score the same records in the same order. An interval that excludes 0
    means the difference is unlikely to be noise at this confidence.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"paired scores differ in length ({len(baseline)} vs {len(candidate)})")
    diffs = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    return bootstrap_ci(diffs, resamples=resamples, confidence=confidence, seed=seed)
