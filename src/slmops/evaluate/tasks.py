"""Task types: how a record becomes a prompt, where its gold answer is, which metrics apply.

A record has an input (``prompt``, another field named by ``input_field``, or chat
``messages``) and a gold answer (``answer`` or ``target_field``). Records that cannot be
scored (no input, no gold answer, a gold label outside the label set) become items with an
``issue``: counted and reported, never fatal, unless no record at all can be scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from slmops.data.prompts import record_to_request
from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.errors import DataError, SlmopsError
from slmops.evaluate.metrics import extract_number, label_key

PER_RECORD_METRICS = ("accuracy", "exact_match", "token_f1", "numeric_match", "rouge_l", "bleu")
LABEL_METRICS = ("accuracy", "macro_f1")
ALL_METRICS = (*PER_RECORD_METRICS, "macro_f1")
NLI_LABELS = ("entailment", "neutral", "contradiction")
LABEL_INSTRUCTION = "Answer with exactly one of these labels: {labels}. Reply with the label only."

ISSUES = ("invalid_input", "missing_gold", "gold_not_in_labels", "gold_not_a_number")


@dataclass(frozen=True)
class TaskSpec:
    """One task type. ``metrics[0]`` is the primary metric (used for CIs, retention, gates)."""

    name: str
    description: str
    metrics: tuple[str, ...]
    instruction: str = ""  # appended to the user's text; {labels} is filled in
    uses_labels: bool = False
    default_labels: tuple[str, ...] = ()
    max_tokens: int = 128


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("classification", "Pick one label from a label set (accuracy, macro-F1, confusion matrix).",
                 ("accuracy", "macro_f1"), LABEL_INSTRUCTION,
                 uses_labels=True, max_tokens=16),
        TaskSpec("nli", "Natural language inference: entailment / neutral / contradiction.",
                 ("accuracy", "macro_f1"), LABEL_INSTRUCTION,
                 uses_labels=True, default_labels=NLI_LABELS, max_tokens=16),
        TaskSpec("qa", "Short-answer questions (SQuAD token F1 and exact match).", ("token_f1", "exact_match"),
                 "Answer with a short phrase only.", max_tokens=32),
        TaskSpec("math", "Word problems scored on the final number.", ("numeric_match",),
                 "Solve the problem step by step, then end with the line 'The answer is N.'", max_tokens=256),
        TaskSpec("conversation", "Open-ended chat replies (ROUGE-L, BLEU; add --judge).", ("rouge_l", "bleu"),
                 max_tokens=256),
        TaskSpec("summarization", "Summaries against a reference (ROUGE-L, BLEU; add --judge).", ("rouge_l", "bleu"),
                 max_tokens=128),
        TaskSpec("generation", "Free generation with the metrics you choose (--metrics).", ("rouge_l", "bleu"),
                 max_tokens=256),
    ]
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise SlmopsError(f"Unknown task type {name!r}.", f"Use one of: {', '.join(TASKS)}.")
    return TASKS[name]


def resolve_metrics(task: TaskSpec, metrics: Sequence[str] | None, labels: Sequence[str]) -> tuple[str, ...]:
    """The metric list for a run: the task's defaults, or for ``generation`` the user's list;
    for other tasks a user list adds metrics after the defaults."""
    chosen = [m.strip() for m in metrics or () if m.strip()]
    unknown = [m for m in chosen if m not in ALL_METRICS]
    if unknown:
        raise SlmopsError(f"Unknown metric(s): {', '.join(unknown)}.", f"Choose from: {', '.join(ALL_METRICS)}.")
    if any(m in LABEL_METRICS for m in chosen) and not (task.uses_labels or labels):
        raise SlmopsError(
            "accuracy and macro_f1 need a label set.", "Use --task classification, or pass --labels a,b,c."
        )
    if task.name == "generation" and chosen:
        base: list[str] = []
    else:
        base = list(task.metrics)
    return tuple(dict.fromkeys([*base, *chosen]))


def parse_labels(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    labels = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    keys = [label_key(lab) for lab in labels]
    if len(set(keys)) != len(keys) or not all(keys):
        raise SlmopsError(f"Labels {', '.join(labels)} are not distinct once case and punctuation are ignored.",
                          "Give labels that differ in letters or digits, e.g. --labels billing,technical,account.")
    return labels


@dataclass(frozen=True)
class EvalItem:
    """One test record ready to run. ``issue`` set means it is counted but not scored."""

    index: int
    where: str
    request: GenerationRequest | None
    gold: Any
    question: str
    issue: str | None = None
    detail: str = ""

    @property
    def scorable(self) -> bool:
        return self.issue is None


def _gold(rec: dict[str, Any], field: str) -> Any:
    value = rec.get(field)
    if value is None or (isinstance(value, str | list) and not value):
        return None
    return value


def infer_labels(located: Sequence[tuple[str, dict[str, Any]]], target_field: str, path: str) -> tuple[str, ...]:
    """The label set from the gold answers, in first-seen order (used when --labels is absent)."""
    labels = parse_labels([str(g) for _, r in located if (g := _gold(r, target_field)) is not None])
    if len(labels) < 2:
        raise DataError(
            f"{path}: found {len(labels)} distinct label(s) in {target_field!r}, so no label set can be inferred.",
            "Pass the label set with --labels a,b,c (or --target-field with the field holding the labels).",
        )
    return labels


def _with_instruction(request: GenerationRequest, instruction: str) -> GenerationRequest:
    if not instruction:
        return request
    if request.prompt is not None:
        return replace(request, prompt=f"{request.prompt}\n\n{instruction}")
    msgs = list(request.messages or ())
    last = max(i for i, m in enumerate(msgs) if m.role == "user") if any(m.role == "user" for m in msgs) else -1
    if last < 0:
        msgs.append(Message("user", instruction))
    else:
        msgs[last] = Message("user", f"{msgs[last].content}\n\n{instruction}")
    return replace(request, messages=tuple(msgs))


def _question(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    users = [m.content for m in request.messages or () if m.role == "user"]
    return users[-1] if users else ""


def build_item(
    index: int,
    where: str,
    rec: dict[str, Any],
    task: TaskSpec,
    params: GenerationParams,
    *,
    labels: Sequence[str],
    target_field: str = "answer",
    input_field: str = "prompt",
    raw: bool = False,
    system: str | None = None,
) -> EvalItem:
    """Turn one record into an :class:`EvalItem` (request plus normalised gold answer)."""
    if task.name == "nli" and input_field not in rec and "messages" not in rec and "premise" in rec:
        rec = {**rec, input_field: f"Premise: {rec['premise']}\nHypothesis: {rec.get('hypothesis', '')}"}
    try:
        request = record_to_request(rec, params, where=where, raw=raw, system=system, input_field=input_field)
    except DataError as exc:
        return EvalItem(index, where, None, None, "", "invalid_input", exc.message)
    question = _question(request)
    request = _with_instruction(request, task.instruction.format(labels=", ".join(labels)))
    gold = _gold(rec, target_field)
    if gold is None:
        return EvalItem(index, where, request, None, question, "missing_gold", f"no {target_field!r} field")
    if labels:
        keys = {label_key(lab): lab for lab in labels}
        label = keys.get(label_key(str(gold)))
        if label is None:
            return EvalItem(index, where, request, gold, question, "gold_not_in_labels", f"gold label {gold!r}")
        gold = label
    elif task.name == "math" and extract_number(gold) is None:
        return EvalItem(index, where, request, gold, question, "gold_not_a_number", f"gold {str(gold)[:40]!r}")
    return EvalItem(index, where, request, gold, question)


def issue_counts(items: Sequence[EvalItem]) -> dict[str, int]:
    return {issue: sum(i.issue == issue for i in items) for issue in ISSUES}
