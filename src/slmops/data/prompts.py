"""Prompt records (``prompt`` text or chat ``messages``) to generation requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.data.fields import message_problems, text_field_problem
from slmops.data.records import read_located
from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.errors import DataError


def record_to_request(
    rec: dict[str, Any],
    params: GenerationParams,
    *,
    where: str,
    raw: bool = False,
    system: str | None = None,
    input_field: str = "prompt",
) -> GenerationRequest:
    """``where`` names the record for error messages (``file, line N``)."""
    if "messages" in rec:
        problems = message_problems(rec["messages"])
        if problems:
            raise DataError(f"{where}: {problems[0]}.", 'Example: [{"role": "user", "content": "Hi"}].')
        out = [Message(m["role"], m["content"]) for m in rec["messages"]]
        if system and out[0].role != "system":
            out.insert(0, Message("system", system))
        return GenerationRequest(messages=tuple(out), params=params)
    problem = text_field_problem(rec, input_field)
    if problem:
        raise DataError(
            f"{where}: {problem}.", f"Give each record a non-empty {input_field!r} string or a 'messages' list."
        )
    text = rec[input_field]
    if raw:
        return GenerationRequest(prompt=text, params=params)
    return GenerationRequest.chat(text, params, system=system)


def read_prompt_file(
    path: Path, params: GenerationParams, **kwargs: Any
) -> list[tuple[dict[str, Any], GenerationRequest]]:
    """Every record of a prompts file with its request; all rows are validated before any work."""
    return [(rec, record_to_request(rec, params, where=where, **kwargs)) for where, rec in read_located(path)]
