"""Output-format checks shared by teacher filtering (``distill generate``) and the deployment
checklist (``validate``): a ``--regex`` compiled once, a ``--json-schema`` file read and checked
once, and the one-line problem of a text against that schema (``None`` when it conforms)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError

# a JSON answer inside a Markdown code fence (```json ... ```) is judged on what is inside
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n```$", re.DOTALL)


def compile_regex(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SlmopsError(f"--regex {pattern!r} is not a valid regular expression: {exc}.") from exc


def load_schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import jsonschema

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (OSError, ValueError) as exc:
        raise SlmopsError(f"--json-schema {path} is not a readable JSON file: {exc}.") from exc
    except jsonschema.SchemaError as exc:
        raise SlmopsError(f"--json-schema {path} is not a valid JSON Schema: {exc.message}.") from exc
    return schema


def json_problem(text: str, schema: dict[str, Any]) -> str | None:
    """Why ``text`` (optionally fenced) is not a JSON value matching ``schema``, or ``None``."""
    import jsonschema

    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "(root)"
    return f"{where}: {error.message}"
