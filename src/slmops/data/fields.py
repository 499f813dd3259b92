"""Field checks shared by every reader of records (``finetune``, ``distill generate``,
``evaluate``), so one mistake gets one message whichever command meets it."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def type_name(value: Any) -> str:
    """JSON's name for a value's type (``null``, ``list``, ``int``), as a user wrote it."""
    return "null" if value is None else type(value).__name__


def text_field_problem(rec: dict[str, Any], field: str, *, allow_empty: bool = False) -> str | None:
    """Why ``rec[field]`` is not usable text, or None: missing, not a string, or (unless
    ``allow_empty``) empty or blank."""
    if field not in rec:
        return f"missing {field!r} field (keys: {', '.join(map(str, rec)) or 'none'})"
    value = rec[field]
    if not isinstance(value, str):
        return f"{field!r} must be a string, not {type_name(value)}"
    if not allow_empty and not value.strip():
        return f"{field!r} is empty"
    return None


def message_problems(msgs: Any) -> list[str]:
    """Why a chat ``messages`` value is not a list of role/content turns (empty when it is)."""
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    return [
        f"messages[{j}] must be an object with a role ({'/'.join(ROLES)}) and string content"
        for j, m in enumerate(msgs)
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
    ]
