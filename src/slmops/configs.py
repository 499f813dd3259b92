"""The base of every command's config: one pydantic model whose fields are the CLI flags, the
pipeline's YAML keys and the Python arguments (``--soak-requests`` = ``soak_requests``).

A :class:`CommandConfig` checks types and per-field limits (``Field(ge=1)``) when it is built
and its cross-field rules in :meth:`~CommandConfig.problems`; every problem is reported at
once, as one :class:`ConfigError` (exit code 2), before any work starts. Fields may also be
given positionally, in declaration order (``ValidateConfig("tiny", "qa.jsonl")``). The CLI
builds each option from its field (:func:`slmops.cli.common.field_option`: flag, help text,
default and limits), so the three never drift apart.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from slmops.errors import SlmopsError

_RAW: ContextVar[bool] = ContextVar("slmops_config_raw", default=False)
_LIMITS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


class ConfigError(SlmopsError):
    """Invalid settings for a command (every problem listed)."""


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "settings"
    ctx = error.get("ctx") or {}
    op = _LIMITS.get(error["type"])
    if op and ctx:
        what = f"must be {op} {next(iter(ctx.values()))}"
    elif error["type"] == "extra_forbidden":
        what = "is not a known setting"
    else:
        what = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) and len(repr(got)) < 60 else ""
    return f"{where} {what}{shown}"


class CommandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    what: ClassVar[str] = "settings"  # "Invalid {what}: ..."
    example: ClassVar[str] = ""  # the hint: a command line that works

    def __init__(self, *args: Any, **values: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        for name, value in zip(names, args, strict=False):
            if name in values:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            values[name] = value
        if _RAW.get():  # validate_raw: pydantic's own error, with locations, for the pipeline's messages
            super().__init__(**values)
            return
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = [_problem(e) for e in exc.errors()]
            # the cross-field rules too, on the values as given, so one error lists everything (a
            # value of the wrong type may break a rule: its field error already says so)
            with contextlib.suppress(Exception):
                problems += type(self).model_construct(**values).problems()
            raise self._error(problems) from None
        problems = self.problems()
        if problems:
            raise self._error(problems)

    def problems(self) -> list[str]:
        """Cross-field rules (``--regex`` or ``--json-schema``, not both); one line each."""
        return []

    @classmethod
    def validate_raw(cls, values: dict[str, Any]) -> CommandConfig:
        """Build without the cross-field rules, raising pydantic's ``ValidationError`` (field
        locations intact); the pipeline checks a step this way and adds :meth:`problems`."""
        token = _RAW.set(True)
        try:
            return cls(**values)
        finally:
            _RAW.reset(token)

    @classmethod
    def _error(cls, problems: list[str]) -> ConfigError:
        return ConfigError(f"Invalid {cls.what}: " + "; ".join(problems) + ".", cls.example or None)
