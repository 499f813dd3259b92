"""LLM-as-judge: a rubric prompt, a robust score parser, and a mean score per model.

The judge is any engine (a store model, a path, or an OpenAI-compatible ``URL#model``).
Its scores are reported beside the automatic metrics, never instead of them; replies with
no readable score are counted as ``unparsed`` and left out of the mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slmops.engines.base import Engine, GenerationParams, GenerationRequest
from slmops.engines.batched import generate_batched
from slmops.evaluate.bootstrap import ConfidenceInterval, bootstrap_ci

RUBRIC = """You are a strict, fair judge of answers written by an AI assistant.

Rate the answer to the user's request on a scale of 1 to 10:
- 9-10: correct, complete, clear and well suited to the request
- 7-8: correct with minor omissions or wording problems
- 4-6: partly correct, or correct but unhelpful, vague or much too long
- 2-3: mostly wrong, off topic or badly written
- 1: empty, nonsense, harmful, or entirely wrong
{reference_block}
[User request]
{question}

[Answer to rate]
{answer}

Reply with "Score: N" (N a whole number from 1 to 10) on the first line, then one short sentence of reasons."""

_REFERENCE = "\nA reference answer is given; an answer need not copy it, but must agree with it on facts.\n\n" \
             "[Reference answer]\n{reference}\n"

_PATTERNS = (
    re.compile(r"(?:score|rating|grade)\s*(?:is|of|:|=)?\s*\**\s*(\d{1,2}(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(\d{1,2}(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE),
    re.compile(r"(?<![\d.])(\d{1,2}(?:\.\d+)?)(?!\d|\.\d)"),
)

JUDGE_PARAMS = GenerationParams(max_tokens=48, temperature=0.0, seed=0)


def judge_request(question: str, answer: str, reference: str | None = None) -> GenerationRequest:
    block = _REFERENCE.format(reference=reference) if reference else ""
    text = RUBRIC.format(reference_block=block, question=question.strip(), answer=answer.strip() or "(empty)")
    return GenerationRequest.chat(text, JUDGE_PARAMS)


def parse_score(text: str) -> float | None:
    """A 1-10 score from a judge's reply: ``Score: 7``, ``**8**/10``, ``Rating: 9 out of 10``,
    ``I would give it a 6.``; the first labelled score wins, then ``N/10``, then the first
    bare number in range. ``None`` when nothing between 1 and 10 is found."""
    for pattern in _PATTERNS:
        for found in pattern.findall(text):
            value = float(found)
            if 1 <= value <= 10:
                return value
    return None


@dataclass(frozen=True)
class JudgeResult:
    judge: str
    mean: float | None
    scores: list[float | None]
    unparsed: int
    interval: ConfidenceInterval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "mean": self.mean,
            "scored": sum(s is not None for s in self.scores),
            "unparsed": self.unparsed,
            "ci": self.interval.to_dict() if self.interval else None,
        }


def judge_answers(
    engine: Engine,
    judge: str,
    questions: Sequence[str],
    answers: Sequence[str],
    references: Sequence[str | None],
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> JudgeResult:
    """Ask ``engine`` to score each answer; a failed batch is retried one request at a time."""
    requests = [judge_request(q, a, r) for q, a, r in zip(questions, answers, references, strict=True)]
    replies = [None if r is None else r.text for r in generate_batched(engine, requests, batch_size=batch_size)]
    scores = [parse_score(r) if r is not None else None for r in replies]
    valid = [s for s in scores if s is not None]
    return JudgeResult(
        judge=judge,
        mean=sum(valid) / len(valid) if valid else None,
        scores=scores,
        unparsed=len(scores) - len(valid),
        interval=bootstrap_ci(valid, seed=seed),
    )
