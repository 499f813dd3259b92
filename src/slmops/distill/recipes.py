"""Prompt recipes: how the teacher is asked, per task type, and how the student will be asked.

A recipe is a system prompt, a user-turn ``template`` (``{input}`` is the record's text; other
``{field}`` placeholders come from the record), an ``answer_format`` appended after a blank line
(``{labels}`` is the label set), or put before the text with ``format_first`` (every prompt then
opens with the same system prompt, instruction and label set, a long prefix the engine's prefix
cache prefills once; off by default: the built-in 135M teacher labels 48/48 language tickets right
with the instruction after the ticket and 37/48 with it before, bench/RESULTS.md), a
chain-of-thought format used instead with ``--cot`` (math), and optional few-shot ``examples``.
Every task has a default; a YAML or JSON file (``--recipe``) overrides any of its keys. The
*student* is always asked the way ``slmops eval`` asks it (the evaluate module's task
instruction), so training prompts and test prompts match.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.engines.base import GenerationParams
from slmops.errors import DataError, SlmopsError
from slmops.evaluate.metrics import extract_number
from slmops.evaluate.tasks import LABEL_INSTRUCTION, TASKS, EvalItem, build_item

DISTILL_TASKS = ("classification", "nli", "qa", "conversation", "math", "summarization")
LABEL_TASKS = ("classification", "nli")
SHOT = "few-shot example"


class _Blank(dict):
    """Template fields of a few-shot example: record fields it lacks read as empty."""

    def __missing__(self, key: str) -> str:
        return ""


class Shot(BaseModel):
    """One few-shot example: the input text and the answer the teacher should imitate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str
    answer: str


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str | None = Field(None, description="System prompt of the teacher.")
    template: str = Field("{input}", description="User turn; {input} is the record's text, {field} a record field.")
    answer_format: str = Field("", description="Appended to the user turn; {labels} is the label set.")
    cot_format: str = Field("", description="Used instead of answer_format with --cot.")
    format_first: bool = Field(False, description="Put the answer format before the user's text, not after it: "
                               "prompts then share a longer prefix, which the prefix cache prefills once.")
    examples: list[Shot] = Field(default_factory=list, description="Fixed few-shot examples (beat --few-shot).")


DEFAULT_RECIPES: dict[str, Recipe] = {
    "classification": Recipe(
        system="You are an expert annotator. Read the user's text and assign it exactly one label.",
        answer_format=LABEL_INSTRUCTION,
    ),
    "nli": Recipe(
        system="You are an expert in natural language inference: decide whether the hypothesis follows from the "
        "premise (entailment), contradicts it (contradiction), or neither (neutral).",
        answer_format=LABEL_INSTRUCTION,
    ),
    "qa": Recipe(system="You answer questions accurately.", answer_format=TASKS["qa"].instruction),
    "conversation": Recipe(system="You are a helpful, accurate and concise assistant."),
    "math": Recipe(
        system="You are a careful mathematician.",
        answer_format="Reply with the final number only.",
        cot_format=TASKS["math"].instruction,
    ),
    "summarization": Recipe(
        system="You write faithful, concise summaries.",
        template="Summarize the following text.\n\n{input}",
        answer_format="Write at most three sentences.",
    ),
}


def load_recipe(task: str, path: Path | None) -> Recipe:
    """The task's default recipe with the keys of a YAML/JSON file laid over it."""
    base = DEFAULT_RECIPES[task]
    if path is None:
        return base
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise SlmopsError(f"Cannot read the recipe file {path}: {exc}", "Give a YAML or JSON mapping.") from exc
    if not isinstance(loaded, dict):
        raise SlmopsError(f"{path} must hold a mapping of recipe keys.", f"Keys: {', '.join(Recipe.model_fields)}.")
    try:
        recipe = Recipe(**{**base.model_dump(), **loaded})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'recipe'}: {e['msg']}" for e in exc.errors())
        keys = ", ".join(Recipe.model_fields)
        raise SlmopsError(f"Invalid recipe file {path}: {problems}.", f"Keys: {keys}.") from None
    for name in ("template", "answer_format", "cot_format"):
        _check_template(getattr(recipe, name), f"{path}: {name}")
    return recipe


def _check_template(text: str, what: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise SlmopsError(f"{what}: bad template {text!r} ({exc}).", "Use {field}; {{ }} for braces.") from None
    if any(not f.isidentifier() for f in fields):
        raise SlmopsError(f"{what}: placeholders must be field names (got {fields}).", "Example: {input}.")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode("utf-8")).hexdigest()


def shot_answer(task: str, gold: Any, cot: bool) -> str:
    """A gold answer as the teacher should write it (math with CoT ends with 'The answer is N.')."""
    text = str(gold[0] if isinstance(gold, list) else gold).strip()
    if task == "math" and cot and (n := extract_number(text)) is not None and text == format_number(n):
        return f"The answer is {text}."
    return text


def format_number(n: float) -> str:
    return f"{n:g}" if abs(n) < 1e15 else str(int(n))


@dataclass(frozen=True)
class Prompter:
    """The resolved recipe of one run: turns an input record into teacher and student messages."""

    task: str
    recipe: Recipe
    labels: tuple[str, ...]
    cot: bool
    input_field: str = "prompt"
    target_field: str = "answer"

    @property
    def answer_format(self) -> str:
        fmt = self.recipe.cot_format if self.cot and self.recipe.cot_format else self.recipe.answer_format
        return fmt.replace("{labels}", ", ".join(self.labels))

    def settings(self) -> dict[str, Any]:
        """Everything that changes what the teacher is asked (hashed into every record key)."""
        return {"task": self.task, "recipe": self.recipe.model_dump(), "labels": list(self.labels), "cot": self.cot,
                "input_field": self.input_field}

    def item(self, index: int, where: str, rec: dict[str, Any]) -> EvalItem:
        """The record as ``slmops eval`` would ask the student (its instruction, its label set)."""
        item = build_item(index, where, rec, TASKS[self.task], GenerationParams(), labels=self.labels,
                          target_field=self.target_field, input_field=self.input_field)
        if item.issue == "invalid_input":
            hint = f"Give each record a non-empty {self.input_field!r} string or a 'messages' list."
            raise DataError(item.detail, hint)
        return item

    def user_turn(self, text: str, rec: dict[str, Any], where: str) -> str:
        fields = {**rec, "input": text}
        try:
            body = self.recipe.template.format_map(fields if where != SHOT else _Blank(fields))
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(f"{where}: the recipe template {self.recipe.template!r} cannot be filled ({exc!r}).",
                            "Give every record the fields the template names, or change the template.") from exc
        return self.with_format(body)

    def with_format(self, body: str) -> str:
        """``body`` with the answer format after it, or before it (``format_first``: the shared
        instruction and label set then come before the per-record text)."""
        if not self.answer_format:
            return body
        return f"{self.answer_format}\n\n{body}" if self.recipe.format_first else f"{body}\n\n{self.answer_format}"

    def teacher_messages(self, item: EvalItem, rec: dict[str, Any], shots: Sequence[Shot]) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.recipe.system}] if self.recipe.system else []
        for shot in shots:
            msgs += [{"role": "user", "content": self.user_turn(shot.input, {}, SHOT)},
                     {"role": "assistant", "content": shot.answer}]
        if "messages" in rec:
            conv = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
            if conv[-1]["role"] != "user":
                raise DataError(f"{item.where}: the conversation must end with a user turn for the teacher to answer.",
                                "Drop the trailing assistant turn.")
            conv[-1]["content"] = self.with_format(conv[-1]["content"])
            if conv[0]["role"] == "system" and msgs and msgs[0]["role"] == "system":
                msgs = msgs[1:]  # the record's own system prompt wins
            return msgs + conv
        return [*msgs, {"role": "user", "content": self.user_turn(item.question, rec, item.where)}]

    def student_turns(self, item: EvalItem) -> list[dict[str, str]]:
        assert item.request is not None and item.request.messages is not None
        return [{"role": m.role, "content": m.content} for m in item.request.messages]

    def shots_from_data(self, located: Sequence[tuple[str, dict[str, Any]]], k: int) -> list[Shot]:
        """``k`` records that carry a gold answer, in file order (one per label first, for label tasks)."""
        if self.recipe.examples or k == 0:
            return list(self.recipe.examples)
        candidates: list[tuple[str, Shot]] = []
        for n, (where, rec) in enumerate(located):
            item = build_item(n, where, rec, TASKS[self.task], GenerationParams(), labels=self.labels,
                              target_field=self.target_field, input_field=self.input_field)
            if item.scorable and "messages" not in rec:
                candidates.append((str(item.gold), Shot(input=item.question, answer=shot_answer(
                    self.task, item.gold, self.cot))))
        if len(candidates) < k:
            raise DataError(f"--few-shot {k} needs {k} records with a gold {self.target_field!r} answer; "
                            f"found {len(candidates)}.", "Lower --few-shot, or add gold answers (--target-field).")
        chosen = [c for i, c in enumerate(candidates) if c[0] not in {g for g, _ in candidates[:i]}][:k]
        chosen += [c for c in candidates if c not in chosen][: k - len(chosen)]
        return [shot for _, shot in chosen]
