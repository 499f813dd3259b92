"""Tool (function) calling on models whose chat template has no tool format of its own.

A model whose chat template takes ``tools`` (it mentions ``tools``) gets the tools and the
tool calls in its own format through ``apply_chat_template(messages, tools=...)``. Every other
model gets the **default format** below, rendered into plain chat messages:

- the function list goes into the system message, one JSON object per line
  (``{"name", "description", "parameters"}``), followed by the instruction to answer a call as
  ``<tool_call>{"name": "NAME", "arguments": {...}}</tool_call>`` (one per line for several);
- an assistant message with ``tool_calls`` is rendered as its content followed by those lines;
- a ``tool`` message becomes a ``user`` message
  ``<tool_response>{"name": ..., "content": ...}</tool_response>``.

Model output is parsed the same way for both: every ``<tool_call>{...}</tool_call>`` block, or
an answer that is one JSON object with ``name`` and ``arguments`` (or ``parameters``). When a
call is required (``tool_choice`` ``required`` or a named function) the answer is constrained
with :func:`tool_call_grammar`, so it parses and its arguments validate by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slmops.engines.grammar import JSON_OPTIONS, check_schema, close_objects, json_schema_grammar, lark_grammar

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text


def template_has_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in str(chat_template)


def tools_system_text(tools: Sequence[dict[str, Any]]) -> str:
    lines = [json.dumps({k: f[k] for k in ("name", "description", "parameters") if k in f}) for f in tools]
    return (
        "You can call these functions (each line: name, description, JSON Schema of the arguments):\n"
        + "\n".join(lines)
        + f"\nTo call a function, answer with {CALL_OPEN}"
        + '{"name": "NAME", "arguments": {...}}'
        + f"{CALL_CLOSE}, one line per call; otherwise answer normally."
    )


def call_text(name: str, arguments: Any) -> str:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    return CALL_OPEN + json.dumps({"name": name, "arguments": args}) + CALL_CLOSE


def render_default(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Chat messages with tools, tool calls and tool results as plain role/content messages."""
    out: list[dict[str, str]] = []
    names: dict[str, str] = {}
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            lines = [content] if content else []
            for call in m["tool_calls"]:
                fn = call["function"]
                names[call.get("id", "")] = fn["name"]
                lines.append(call_text(fn["name"], fn.get("arguments") or "{}"))
            out.append({"role": "assistant", "content": "\n".join(lines)})
        elif role == "tool":
            body = {"name": names.get(m.get("tool_call_id", ""), ""), "content": content}
            out.append({"role": "user", "content": f"<tool_response>{json.dumps(body)}</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        text = tools_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def parse_calls(text: str, names: Sequence[str]) -> tuple[str | None, list[ParsedCall]]:
    """``(content, calls)`` from a model answer; calls to unknown functions are left as text."""
    calls: list[ParsedCall] = []
    spans: list[tuple[int, int]] = []
    for match in _BLOCK.finditer(text):
        call = _as_call(match.group(1), names)
        if call is not None:
            calls.append(call)
            spans.append(match.span())
    if not calls:
        call = _as_call(text.strip(), names)
        if call is not None:
            return None, [call]
        return text, []
    rest, last = [], 0
    for start, end in spans:
        rest.append(text[last:start])
        last = end
    rest.append(text[last:])
    content = "".join(rest).strip()
    return content or None, calls


def _as_call(text: str, names: Sequence[str]) -> ParsedCall | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args))


def tool_call_grammar(functions: Sequence[dict[str, Any]], *, parallel: bool = True) -> str:
    """A grammar for one (or, with ``parallel``, up to :data:`MAX_PARALLEL_CALLS`) calls, each
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` with arguments that validate
    against that function's parameters (``strict`` per function as for ``response_format``)."""
    options: list[dict[str, Any]] = []
    for i, f in enumerate(functions):
        params = f.get("parameters") or {"type": "object", "properties": {}}
        what = f"tools[{i}].function.parameters"
        strict_fn = f.get("strict", True) is not False
        json_schema_grammar(params, strict=strict_fn, what=what)  # each one checked alone: errors name it
        params = close_objects(check_schema(params, what=what)) if strict_fn else params
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    strict = all(f.get("strict", True) is not False for f in functions)
    schema = {"anyOf": options, "x-guidance": {**JSON_OPTIONS, "lenient": not strict}}
    more = f' ("\\n" call){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel else ""
    lark = f"start: call{more}\ncall: {json.dumps(CALL_OPEN)} %json {json.dumps(schema)} {json.dumps(CALL_CLOSE)}\n"
    return lark_grammar(lark, what="The tools' parameters")
