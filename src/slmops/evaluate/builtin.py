"""Built-in test sets shipped with the package (for demos, pipelines and smoke tests).

``--data builtin:NAME`` (or :func:`resolve_data`) finds them wherever slmops is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slmops.errors import DataError

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    file: str
    task: str
    labels: tuple[str, ...]
    description: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset(
            name="support-tickets",
            file="support_tickets.jsonl",
            task="classification",
            labels=("billing", "technical", "account", "other"),
            description="60 hand-written customer support messages to route to billing, technical, account or other.",
        ),
    ]
}


def builtin_dataset(name: str) -> Path:
    """Path of a built-in test set (a JSONL file inside the installed package)."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"Unknown built-in dataset {name!r}.", f"Use one of: {', '.join(BUILTIN_DATASETS)}.")
    path = Path(str(resources.files("slmops.evaluate") / "datasets" / BUILTIN_DATASETS[name].file))
    if not path.exists():
        raise DataError(f"The built-in dataset {name!r} is missing from the installation ({path}).",
                        "Reinstall slmops; the package data was not installed.")
    return path


def resolve_data(data: str | Path) -> tuple[Path, str]:
    """``builtin:NAME`` or a file path → (path, dataset name used in reports and store keys)."""
    text = str(data)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        return builtin_dataset(name), name
    path = Path(text).expanduser()
    return path, path.stem
