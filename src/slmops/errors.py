"""One error family for every user mistake.

Library code raises :class:`SlmopsError` (or a subclass) with a message that names the
problem and a hint that names the fix. The CLI maps it to one clean line on stderr (and,
with ``--json``, one JSON object on stdout, see :func:`error_json`) with the error's
``exit_code``: 2 for a usage or input error, 1 for a check that ran and failed
(:class:`CheckFailed`: a pipeline gate, ``optimize --strict``, ``validate``). Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class SlmopsError(Exception):
    """A problem the user can fix: bad input, unknown model, missing file, full disk."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ModelNotFoundError(SlmopsError):
    """A model reference that matches nothing in the catalog or the store."""


class InvalidModelError(SlmopsError):
    """A model file or folder that is corrupt, truncated or incomplete."""


class DataError(SlmopsError):
    """A malformed input record (file and line are in the message)."""


class EngineError(SlmopsError):
    """An engine could not serve a request (remote endpoint down, bad parameters)."""


class CheckFailed(SlmopsError):
    """A check that ran and did not hold (a gate, a quality limit, a validation checklist):
    exit code 1, so a CI job can tell it from a usage or input error (exit code 2)."""

    exit_code = 1


def error_json(exc: SlmopsError) -> dict[str, Any]:
    """The one machine-readable shape of an error, printed on stdout under ``--json``."""
    return {"error": {"message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code,
                      "type": type(exc).__name__}}
