"""Turn any model reference into something on disk: a store record, a path, or a catalog
model pulled on first use (like ``ollama run``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.errors import ModelNotFoundError
from slmops.models.artifacts import gguf_file, inspect
from slmops.models.catalog import CATALOG
from slmops.models.pull import Progress, pull
from slmops.models.refs import parse_ref
from slmops.models.store import ModelRecord, ModelStore


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    format: str
    record: ModelRecord | None = None

    @property
    def label(self) -> str:
        return self.record.ref if self.record else str(self.path)

    @property
    def gguf_file(self) -> str | None:
        return gguf_file(self.path).name if self.format == "gguf" else None

    @property
    def load_dir(self) -> Path:
        return gguf_file(self.path).parent if self.format == "gguf" else self.path


def resolve(
    ref: str, store: ModelStore, *, pull_missing: bool = True, progress: Progress | None = None
) -> ResolvedModel:
    parsed = parse_ref(ref)
    if parsed.path is not None:
        if not parsed.path.exists():
            raise ModelNotFoundError(f"{parsed.path} does not exist.", "Check the path, or give a store name.")
        fmt, _ = inspect(parsed.path)
        return ResolvedModel(parsed.path.resolve(), fmt)
    rec = store.find(parsed)
    if rec is None and pull_missing and parsed.name in CATALOG and parsed.version is None and parsed.alias is None:
        rec = pull(str(parsed.name), store, progress=progress).record
    if rec is None:
        rec = store.get(parsed)  # raises with suggestions
    return ResolvedModel(rec.path, rec.format, rec)
