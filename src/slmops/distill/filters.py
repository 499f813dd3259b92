"""Teacher-output validation: each check is a pure function of one output (or of the samples of
one input), and every rejection carries a reason from :data:`REASONS`.

Per sample, in order: ``empty``, ``truncated`` (stopped at ``max_tokens``), ``repetition`` (a
block of words or characters looping), then the answer format: ``not_in_label_set``
(classification, NLI; label normalisation of the evaluate module), ``several_labels`` (the
answer names more than one label, e.g. lists them all), ``no_number`` (math; its
number extraction), ``regex_mismatch`` (``--regex``), ``json_schema`` (``--json-schema``).
Across samples: ``no_agreement`` / ``vote_disagreement`` (``--vote``: a strict majority of the
``n`` samples must give the same answer) and ``duplicate`` (the same prompt and completion
already accepted).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slmops.data.formats import json_problem
from slmops.distill.recipes import digest, format_number
from slmops.evaluate.metrics import extract_number, label_key, normalize_answer, normalize_label

REASONS = (
    "empty",
    "truncated",
    "repetition",
    "not_in_label_set",
    "several_labels",
    "no_number",
    "regex_mismatch",
    "json_schema",
    "no_agreement",
    "vote_disagreement",
    "duplicate",
)
VOTE_REASONS = ("no_agreement", "vote_disagreement", "duplicate")  # the sample itself passed every check


@dataclass(frozen=True)
class Checks:
    """The per-sample checks of one run."""

    task: str
    labels: tuple[str, ...] = ()
    cot: bool = False
    regex: re.Pattern[str] | None = None
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    completion: str  # what the student learns
    answer: str | None  # the normalised answer used for voting (None: rejected before it was read)
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loop(units: Sequence[str], max_period: int) -> tuple[int, int]:
    """``(period, repeats)`` of the consecutive repetition covering the most units."""
    best, best_cover = (0, 1), 0
    for period in range(1, min(max_period, len(units) // 2) + 1):
        run = 0
        for j in range(len(units) - period):
            run = run + 1 if units[j] == units[j + period] else 0
            repeats = run // period + 1
            if repeats >= 2 and repeats * period > best_cover:
                best, best_cover = (period, repeats), repeats * period
    return best


def repetition_loop(text: str, *, min_repeats: int = 3, min_words: int = 12, min_chars: int = 40) -> str | None:
    """The looping block when the text degenerates into repetition, else ``None``.

    Words: a block repeated ``min_repeats`` times in a row covering ``min_words`` words, or any
    block repeated twice as often. Characters (text without spaces, symbols): a block of up to
    20 characters repeated 8 times covering ``min_chars`` characters.
    """
    words = text.split()[:1000]
    period, repeats = _loop(words, 30)
    if repeats >= 2 * min_repeats or (repeats >= min_repeats and period * repeats >= min_words):
        start = next(i for i in range(len(words)) if words[i : i + period] * repeats == words[i : i + period * repeats])
        return " ".join(words[start : start + period])
    chars = text[:2000]
    period, repeats = _loop(chars, 20)
    if repeats >= 8 and period * repeats >= min_chars:
        start = next(i for i in range(len(chars)) if chars[i : i + period] * repeats == chars[i : i + period * repeats])
        return chars[start : start + period]
    return None


def labels_named(text: str, labels: Sequence[str]) -> list[str]:
    """The labels that appear as whole words in ``text`` (case and punctuation ignored)."""
    padded = f" {label_key(text)} "
    return [lab for lab in labels if label_key(lab) and f" {label_key(lab)} " in padded]


def check_output(text: str, finish_reason: str, checks: Checks) -> Verdict:
    """Every per-sample check on one teacher output; the first failure is the reason."""
    stripped = text.strip()
    if not stripped:
        return Verdict("", None, "empty")
    if finish_reason == "length":
        return Verdict(stripped, None, "truncated", _short(stripped[-60:]))
    loop = repetition_loop(stripped)
    if loop is not None:
        return Verdict(stripped, None, "repetition", f"repeats {_short(loop)!r}")
    if checks.regex is not None and not checks.regex.search(stripped):
        return Verdict(stripped, None, "regex_mismatch", _short(stripped))
    if checks.json_schema is not None and (problem := json_problem(stripped, checks.json_schema)):
        return Verdict(stripped, None, "json_schema", _short(problem, 200))
    if checks.labels:
        label = normalize_label(stripped, checks.labels)
        if label is None:
            return Verdict(stripped, None, "not_in_label_set", _short(stripped))
        named = labels_named(stripped, checks.labels)
        if len(named) > 1:
            return Verdict(stripped, None, "several_labels", ", ".join(named))
        return Verdict(label, label)
    if checks.task == "math":
        number = extract_number(stripped)
        if number is None:
            return Verdict(stripped, None, "no_number", _short(stripped))
        answer = format_number(number)
        return Verdict(stripped if checks.cot else answer, answer)
    return Verdict(stripped, normalize_answer(stripped) or stripped)


def majority(answers: Sequence[str | None], n: int) -> str | None:
    """The answer given by more than half of the ``n`` samples (``None`` answers are rejected
    samples: they count in ``n`` but vote for nothing); ``None`` when no answer has a majority."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    answer, count = counts.most_common(1)[0]
    return answer if count * 2 > n else None


def apply_vote(verdicts: Sequence[Verdict], prior: Sequence[str | None], n: int) -> list[Verdict]:
    """Reject the passing samples that disagree with the majority of all ``n`` samples of one
    input (``prior``: the answers of its samples recorded by an interrupted run)."""
    winner = majority([*prior, *(v.answer for v in verdicts)], n)
    out = []
    for v in verdicts:
        if not v.ok:
            out.append(v)
        elif winner is None:
            out.append(Verdict(v.completion, v.answer, "no_agreement", f"answers: {_answers(prior, verdicts)}"))
        elif v.answer != winner:
            out.append(Verdict(v.completion, v.answer, "vote_disagreement", f"majority {_short(winner)!r}"))
        else:
            out.append(v)
    return out


def _answers(prior: Sequence[str | None], verdicts: Sequence[Verdict]) -> str:
    given = [a for a in [*prior, *(v.answer for v in verdicts)] if a is not None]
    return ", ".join(_short(a, 30) for a in given) or "none"


def dedup_key(prompt: Any, completion: str) -> str:
    return digest([prompt, " ".join(completion.split()).lower()])
