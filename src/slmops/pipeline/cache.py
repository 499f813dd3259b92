"""Step keys and the step cache.

A step's key is a hash of its kind, its resolved settings, what every file and model it reads
contains (a file's sha256, a store model's exact version) and the slmops version. The cache maps
a key to the outputs the step produced; an entry is used only while the models and files those
outputs point to still exist.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmops import __version__
from slmops.errors import SlmopsError
from slmops.files import file_sha256, write_json_atomic
from slmops.models.store import ModelStore


def pipelines_dir(store: ModelStore) -> Path:
    return store.home / "pipelines"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    return _digest(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                          for p in path.rglob("*") if p.is_file()))


WRITES = frozenset({"output", "name", "aliases"})


def fingerprint(value: Any, store: ModelStore) -> Any:
    """What each string in the settings points to: a file's content hash, a store model's exact
    version, or nothing (plain settings are in the key already)."""
    from slmops.evaluate.builtin import BUILTIN_PREFIX, resolve_data
    from slmops.models.catalog import CATALOG
    from slmops.models.refs import parse_ref

    if isinstance(value, dict):
        # what a step writes (an output name or folder) is not one of its inputs
        prints = {k: fingerprint(v, store) for k, v in value.items() if k not in WRITES}
        return {k: v for k, v in prints.items() if v is not None} or None
    if isinstance(value, list | tuple):
        out = [fingerprint(v, store) for v in value]
        return out if any(v is not None for v in out) else None
    if not isinstance(value, str) or not value or value.startswith(("http://", "https://")) or "\n" in value:
        return None
    if value.startswith(BUILTIN_PREFIX):
        try:
            return "builtin:" + _file_digest(resolve_data(value)[0])
        except SlmopsError:
            return None
    path = Path(value).expanduser()
    if len(value) < 4096 and ("/" in value or path.suffix) and path.exists():
        return "file:" + _file_digest(path)
    try:
        ref = parse_ref(value, allow_path=False)
        rec = store.find(ref)
    except (SlmopsError, ValueError):
        return None
    if ref.name in CATALOG and ref.version is None and ref.alias is None and (
        rec is None or rec.recipe.get("kind") == "pull"
    ):
        return f"catalog:{CATALOG[ref.name]}"  # pulled on first use: the same model before and after the pull
    return f"model:{rec.ref}:{rec.created_at}" if rec else None


def step_key(kind: str, settings: dict[str, Any], store: ModelStore) -> str:
    return _digest({"slmops": __version__, "kind": kind, "settings": settings,
                    "inputs": fingerprint(settings, store)})


def cached(store: ModelStore, key: str) -> dict[str, Any] | None:
    """The outputs cached under ``key``, if everything they point to still exists."""
    path = pipelines_dir(store) / "cache" / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    outputs = entry.get("outputs") or {}
    if isinstance(outputs.get("model"), str) and store.find(outputs["model"]) is None:
        return None  # the model was removed from the store
    for k in ("synthetic", "report", "bundle"):
        if isinstance(outputs.get(k), str) and not Path(outputs[k]).exists():
            return None
    return outputs


def remember(store: ModelStore, key: str, step: str, kind: str, seconds: float, outputs: dict[str, Any]) -> None:
    """Cache a finished step's outputs under its key (written atomically)."""
    folder = pipelines_dir(store) / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"key": key, "step": step, "kind": kind, "seconds": seconds, "outputs": outputs, "slmops": __version__,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json_atomic(folder / f"{key}.json", entry, indent=None)
