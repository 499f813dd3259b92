"""Records to tokenized training examples, validated all at once before any training.

Three record shapes:

* **text template** (``--text-template``): ``{field}`` placeholders filled from the record.
  The template's *last* placeholder starts the answer: everything rendered before it is the
  prompt, the rest (that field and any text after it) is the answer, followed by the end-of-
  sequence token. ``"Q: {question}\\nA: {answer}"`` trains on ``{answer}`` given
  ``"Q: ...\\nA: "``; generate with the same prompt text and ``--raw``.
* **chat** (a ``messages`` list): rendered with the model's chat template; the assistant turns
  (with their end-of-turn markers) are the answer, everything else is the prompt.
* **prompt/completion** pairs: one user turn and one assistant turn through the chat template
  when the tokenizer has one (so ``slmops generate MODEL --prompt ...`` matches training),
  else the prompt text followed directly by the completion.

Loss is on the answer tokens only (prompt tokens get the label ``-100``) unless
``train_on_prompt``. Each piece is tokenized on its own, exactly as the engine tokenizes a
prompt at inference time.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slmops.data.fields import message_problems, text_field_problem, type_name
from slmops.data.records import read_located
from slmops.errors import DataError

IGNORE = -100
Truncation = Literal["drop", "truncate", "error"]
MAX_LISTED = 12


@dataclass(frozen=True)
class Example:
    """One tokenized example: ``labels[i]`` is ``input_ids[i]`` where the token is trained, else -100."""

    input_ids: list[int]
    labels: list[int]
    where: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class ExampleSet:
    examples: list[Example]
    shapes: dict[str, int]  # how many rows of each shape
    truncated: int = 0
    dropped: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.examples)


Piece = tuple[str, bool]  # (text, is_answer)


class TextTemplate:
    """A ``{field}`` template split at its last placeholder into prompt and answer."""

    def __init__(self, template: str) -> None:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise DataError(
                f"Bad --text-template {template!r}: {exc}.", "Use {field} placeholders; {{ }} for literal braces."
            ) from exc
        self.fields = [f for _, f, _, _ in parsed if f is not None]
        if not self.fields or any(not f.isidentifier() for f in self.fields):
            raise DataError(
                f"--text-template {template!r} needs {{field}} placeholders naming record fields.",
                'Example: "Q: {question}\\nA: {answer}".',
            )
        self.template = template
        self.answer_field = self.fields[-1]
        self.parsed = parsed

    def problems(self, rec: dict[str, Any]) -> list[str]:
        out = []
        for f in dict.fromkeys(self.fields):
            if f not in rec:
                out.append(f"template field {f!r} is missing (keys: {', '.join(rec) or 'none'})")
            elif not isinstance(rec[f], str | int | float) or isinstance(rec[f], bool):
                out.append(f"field {f!r} must be text or a number, not {type_name(rec[f])}")
        return out

    def pieces(self, rec: dict[str, Any]) -> list[Piece]:
        prompt, answer, in_answer, seen = [], [], False, 0
        for literal, field, spec, conv in self.parsed:
            (answer if in_answer else prompt).append(literal)
            if field is None:
                continue
            seen += 1
            in_answer = in_answer or seen == len(self.fields)
            value = rec[field]
            value = repr(value) if conv == "r" else str(value)
            (answer if in_answer else prompt).append(format(value, spec or ""))
        return [("".join(prompt), False), ("".join(answer), True)]


def _chat_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[Piece]:
    """Split a rendered conversation into prompt and assistant pieces by rendering prefixes."""
    render = tokenizer.apply_chat_template
    pieces: list[Piece] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True, tokenize=False) if i else ""
        upto = render(messages[: i + 1], tokenize=False)
        if not (before.startswith(done) and upto.startswith(before)):
            raise ValueError("the chat template does not render conversations as growing prefixes")
        pieces += [(before[len(done) :], False), (upto[len(before) :], True)]
        done = upto
    full = render(messages, tokenize=False)
    return [*pieces, (full[len(done) :], False)]


def _message_problems(msgs: Any) -> list[str]:
    out = message_problems(msgs)
    if not out and not any(m["role"] == "assistant" for m in msgs):
        out.append("'messages' has no assistant turn to learn from")
    return out


def _pair_problems(rec: dict[str, Any]) -> list[str]:
    return [p for k in ("prompt", "completion") if (p := text_field_problem(rec, k, allow_empty=True))]


@dataclass(frozen=True)
class Rendered:
    shape: str
    problems: list[str]
    pieces: list[Piece]
    chat: bool = False  # rendered by the chat template (which adds its own special tokens)


def render_record(rec: dict[str, Any], tokenizer: Any, template: TextTemplate | None) -> Rendered:
    """The record's prompt/answer pieces, or the problems that stop it from being used."""
    if template is not None:
        problems = template.problems(rec)
        return Rendered("template", problems, [] if problems else template.pieces(rec))
    if "messages" in rec:
        problems = _message_problems(rec["messages"])
        if not problems and not tokenizer.chat_template:
            problems = ["chat 'messages' need a model with a chat template (this one has none)"]
        if problems:
            return Rendered("chat", problems, [])
        msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        return Rendered("chat", [], _chat_pieces(tokenizer, msgs), chat=True)
    if "prompt" in rec and "completion" in rec:
        problems = _pair_problems(rec)
        if problems:
            return Rendered("prompt-completion", problems, [])
        if tokenizer.chat_template:
            msgs = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
            return Rendered("prompt-completion", [], _chat_pieces(tokenizer, msgs), chat=True)
        return Rendered("prompt-completion", [], [(rec["prompt"], False), (rec["completion"], True)])
    keys = ", ".join(rec) or "none"
    return Rendered("unknown", [f"no 'messages', no 'prompt'+'completion' and no --text-template (keys: {keys})"], [])


def tokenize_pieces(
    tokenizer: Any, pieces: Sequence[Piece], *, raw: bool, train_on_prompt: bool
) -> tuple[list[int], list[int]]:
    """Token ids and labels; ``raw`` pieces get the tokenizer's special tokens and an EOS after the answer."""
    ids: list[int] = []
    labels: list[int] = []
    for n, (text, is_answer) in enumerate(pieces):
        if not text:
            continue
        toks = list(tokenizer(text, add_special_tokens=raw and n == 0)["input_ids"])
        if raw and is_answer and tokenizer.eos_token_id is not None:
            toks.append(tokenizer.eos_token_id)
        ids += toks
        labels += toks if (is_answer or train_on_prompt) else [IGNORE] * len(toks)
    return ids, labels


def build_examples(
    paths: Path | Sequence[Path],
    tokenizer: Any,
    *,
    max_seq_len: int,
    text_template: str | None = None,
    train_on_prompt: bool = False,
    truncation: Truncation = "error",
    records: Sequence[tuple[str, dict[str, Any]]] | None = None,
) -> ExampleSet:
    """Read, validate and tokenize every record; raises one :class:`DataError` listing every
    problem (with file and row) before any training starts."""
    template = TextTemplate(text_template) if text_template else None
    located = (
        list(records)
        if records is not None
        else [item for p in ([paths] if isinstance(paths, Path) else paths) for item in read_located(p)]
    )
    problems: list[str] = []
    too_long: list[str] = []
    examples: list[Example] = []
    shapes: dict[str, int] = {}
    truncated = dropped = 0
    for where, rec in located:
        r = render_record(rec, tokenizer, template)
        shapes[r.shape] = shapes.get(r.shape, 0) + 1
        problems += [f"{where}: {e}" for e in r.problems]
        if r.problems:
            continue
        ids, labels = tokenize_pieces(tokenizer, r.pieces, raw=not r.chat, train_on_prompt=train_on_prompt)
        if not any(label != IGNORE for label in labels):
            problems.append(f"{where}: the answer is empty, so there is nothing to learn from")
            continue
        if len(ids) > max_seq_len:
            if truncation == "error":
                too_long.append(f"{where} ({len(ids)} tokens)")
                continue
            if truncation == "drop" or all(label == IGNORE for label in labels[:max_seq_len]):
                dropped += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            truncated += 1
        examples.append(Example(ids, labels, where))
    if too_long:
        listed = ", ".join(too_long[:MAX_LISTED]) + (" ..." if len(too_long) > MAX_LISTED else "")
        problems.append(
            f"{len(too_long)} example(s) are longer than --max-seq-len {max_seq_len}: {listed}"
            + " (raise --max-seq-len, or pass --truncation drop or --truncation truncate)"
        )
    if not problems and not examples:
        problems.append(f"no examples are left after --truncation {truncation} ({dropped} dropped)")
    if problems:
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        listed = problems[:MAX_LISTED] + more
        raise DataError(
            f"The training data has {len(problems)} problem(s):\n  - " + "\n  - ".join(listed),
            "Fix the rows named above; nothing was trained.",
        )
    return ExampleSet(examples, shapes, truncated, dropped)
