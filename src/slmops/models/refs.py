"""Model references: ``name``, ``name:version``, ``name@alias`` or a filesystem path."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import SlmopsError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def validate_name(name: str, what: str = "model name") -> str:
    """Reject names that could escape the store (``..``, ``/``) or confuse references."""
    if not NAME_RE.match(name) or ".." in name:
        raise SlmopsError(
            f"Invalid {what} {name!r}.",
            "Use lower-case letters, digits, '.', '_' and '-' (start with a letter or digit, no '..', at most 100).",
        )
    return name


def name_problems(name: str | None, what: str = "--output name") -> list[str]:
    """The problem with ``name`` as a one-item list ([] when it is valid or not given), for configs
    that report every problem at once."""
    try:
        if name is not None:
            validate_name(name, what)
    except SlmopsError as exc:
        return [str(exc)]
    return []


def validate_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise SlmopsError(
            f"Invalid alias {alias!r}.", "Aliases are lower-case words such as 'prod', 'staging' or 'candidate-2'."
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. Exactly one of ``path`` or ``name`` is set."""

    name: str | None = None
    version: int | None = None
    alias: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return str(self.name)


def parse_ref(ref: str, *, allow_path: bool = True) -> ModelRef:
    """Parse a reference string. Anything that looks like a path (has a slash, starts with '.'
    or '~', or, with ``allow_path``, exists on disk) is a path. Store look-ups pass
    ``allow_path=False`` so that a folder named like a model in the working directory does not
    shadow it."""
    ref = ref.strip()
    if not ref:
        raise SlmopsError("Empty model reference.", "Give a model name such as 'smollm2-135m-instruct' or a path.")
    if "/" in ref or ref.startswith((".", "~")) or (allow_path and Path(ref).exists()):
        return ModelRef(path=Path(ref).expanduser())
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(name=validate_name(name), alias=validate_alias(alias))
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not version.isdigit():
            raise SlmopsError(f"Invalid version in {ref!r}.", "Versions are whole numbers, e.g. 'my-model:2'.")
        return ModelRef(name=validate_name(name), version=int(version))
    return ModelRef(name=validate_name(ref))


def suggest(name: str, candidates: list[str]) -> str:
    """A 'Did you mean ...?' hint from the closest known names."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.4)
    if close:
        return "Did you mean " + " or ".join(repr(c) for c in close) + "? `slmops models list` shows every model."
    return "`slmops models list` shows every model; `slmops models pull NAME` fetches a built-in one."
