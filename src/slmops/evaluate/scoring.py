"""Score a model's outputs on the scorable records of a test set.

Per-record scores feed the bootstrap intervals and the paired comparison; aggregates are
means, except BLEU (corpus BLEU) and macro-F1 (over the whole set). An empty output scores
0 on every metric; an output that maps to no label is an ``invalid_prediction`` and wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slmops.evaluate import metrics as m
from slmops.evaluate.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_items_ci

FLAGS = ("empty_output", "invalid_prediction", "no_number", "generation_error")


@dataclass(frozen=True)
class TaskScores:
    aggregates: dict[str, float]
    per_record: dict[str, list[float]]
    predictions: list[str | None]  # the label or number read from each output, when the task has one
    flags: list[str | None]
    confusion: m.Confusion | None = None
    intervals: dict[str, ConfidenceInterval] = field(default_factory=dict)

    def flag_counts(self) -> dict[str, int]:
        return {f: sum(x == f for x in self.flags) for f in FLAGS}


def _first(gold: Any) -> str:
    return str(gold[0]) if isinstance(gold, list) else str(gold)


def _per_record(metric: str, output: str, gold: Any, label: str | None) -> float:
    if not output.strip():
        return 0.0
    if metric == "accuracy":
        return float(label is not None and label == gold)
    if metric == "exact_match":
        return m.exact_match(output, gold if isinstance(gold, list) else str(gold))
    if metric == "token_f1":
        return m.token_f1(output, gold if isinstance(gold, list) else str(gold))
    if metric == "numeric_match":
        return m.numeric_match(output, gold[0] if isinstance(gold, list) else gold)
    if metric == "rouge_l":
        return max(m.rouge_l(output, str(g)) for g in (gold if isinstance(gold, list) else [gold]))
    if metric == "bleu":
        return m.sentence_bleu(output, _first(gold))
    raise ValueError(f"no per-record scorer for {metric}")


def _flag(output: str | None, label: str | None, metrics: Sequence[str], labels: Sequence[str]) -> str | None:
    if output is None:
        return "generation_error"
    if not output.strip():
        return "empty_output"
    if labels and label is None and any(x in ("accuracy", "macro_f1") for x in metrics):
        return "invalid_prediction"
    if "numeric_match" in metrics and m.extract_number(output) is None:
        return "no_number"
    return None


def score_outputs(
    metrics: Sequence[str],
    outputs: Sequence[str | None],
    golds: Sequence[Any],
    labels: Sequence[str] = (),
    *,
    seed: int = 0,
    resamples: int = 1000,
) -> TaskScores:
    """Score ``outputs`` (``None`` = the engine failed on that record) against ``golds``."""
    texts = [o or "" for o in outputs]
    read_labels = [m.normalize_label(t, labels) if labels and t.strip() else None for t in texts]
    per: dict[str, list[float]] = {}
    for metric in metrics:
        if metric != "macro_f1":
            per[metric] = [_per_record(metric, t, g, lab) for t, g, lab in zip(texts, golds, read_labels, strict=True)]
    aggregates = {k: (sum(v) / len(v) if v else 0.0) for k, v in per.items()}
    refs = [_first(g) for g in golds]
    if "bleu" in per:
        aggregates["bleu"] = m.corpus_bleu(texts, refs)
    confusion = None
    label_golds = [str(g) for g in golds]
    if labels:
        confusion = m.confusion_matrix(read_labels, label_golds, labels)
        if "macro_f1" in metrics:
            aggregates["macro_f1"] = m.macro_f1(read_labels, label_golds, labels)
    if labels:
        predictions: list[str | None] = list(read_labels)
    elif "numeric_match" in metrics:
        predictions = [None if (x := m.extract_number(t)) is None else f"{x:g}" for t in texts]
    else:
        predictions = [None] * len(texts)
    flags = [_flag(o, lab, metrics, labels) for o, lab in zip(outputs, read_labels, strict=True)]
    intervals: dict[str, ConfidenceInterval] = {}
    for metric in metrics:
        ci: ConfidenceInterval | None
        if metric == "bleu":
            pairs = list(zip(texts, refs, strict=True))
            ci = bootstrap_items_ci(pairs, lambda p: m.corpus_bleu([a for a, _ in p], [b for _, b in p]),
                                    resamples=min(resamples, 200), seed=seed)
        elif metric == "macro_f1":
            pairs = list(zip(read_labels, label_golds, strict=True))
            ci = bootstrap_items_ci(pairs, lambda p: m.macro_f1([a for a, _ in p], [b for _, b in p], labels),
                                    resamples=min(resamples, 200), seed=seed)
        else:
            ci = bootstrap_ci(per[metric], resamples=resamples, seed=seed)
        if ci is not None:
            intervals[metric] = ci
    return TaskScores(aggregates, per, predictions, flags, confusion, intervals)
