"""Prompt records (``prompt`` text or chat ``messages``) to generation requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.data.records import read_located
from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.errors import DataError

ROLES = ("system", "user", "assistant")


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
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list.", 'Use [{"role": "user", ...}].')
        out = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(
                    f"{where}: messages[{j}] must be an object with a role ({'/'.join(ROLES)}) and string content.",
                    'Example: {"role": "user", "content": "Hi"}.',
                )
            out.append(Message(m["role"], m["content"]))
        if system and out[0].role != "system":
            out.insert(0, Message("system", system))
        return GenerationRequest(messages=tuple(out), params=params)
    text = rec.get(input_field)
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"{where}: missing or empty {input_field!r} field (keys: {', '.join(rec) or 'none'}).",
            f"Give each record a non-empty {input_field!r} string or a 'messages' list.",
        )
    if raw:
        return GenerationRequest(prompt=text, params=params)
    return GenerationRequest.chat(text, params, system=system)


def read_prompt_file(
    path: Path, params: GenerationParams, **kwargs: Any
) -> list[tuple[dict[str, Any], GenerationRequest]]:
    """Every record of a prompts file with its request; all rows are validated before any work."""
    return [(rec, record_to_request(rec, params, where=where, **kwargs)) for where, rec in read_located(path)]
