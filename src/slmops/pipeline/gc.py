"""``slmops gc``: find and reclaim the space in ``$SLMOPS_HOME`` that no model needs.

What counts as garbage (each reported with its size and why):

* **tmp debris**: staging folders and trash left in ``tmp/`` by killed processes, untouched
  for an hour (a staging folder still being written is newer than that);
* **orphan artifacts**: ``models/NAME/vN/`` folders without an index row (a crash between the
  rename and the insert, or during a removal);
* **orphan runs**: ``runs/`` folders of models that are no longer in the store (fine-tune
  checkpoints, search trials, distill training data and synthetic-data journals that no
  model's recipe and no live pipeline cache entry names), untouched for an hour; an
  interrupted fine-tune's checkpoints count too (``--dry-run`` lists them first);
* **stale cache entries**: pipeline step-cache entries whose outputs are gone.

It lives in the pipeline layer because it reads the pipeline step cache as well as the store.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmops.models.store import RUN_KINDS, ModelStore, folder_size

QUIET_S = 3600.0  # an entry touched more recently may belong to a running process


@dataclass(frozen=True)
class Garbage:
    path: Path
    kind: str  # tmp | artifact | run | cache
    size_bytes: int
    why: str

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class GcResult:
    home: Path
    dry_run: bool
    items: list[Garbage] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(g.size_bytes for g in self.items)

    def to_dict(self) -> dict:
        return {"home": str(self.home), "dry_run": self.dry_run, "size_bytes": self.size_bytes,
                "items": [g.to_dict() for g in self.items]}


def _last_touched(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir():
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, p.lstat().st_mtime)
    return newest


def _size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return folder_size(path)
    return 0


def find_garbage(store: ModelStore, *, quiet_s: float = QUIET_S) -> list[Garbage]:
    """Everything under the store's home that no model needs (see the module docstring)."""
    from slmops.pipeline.cache import cached, pipelines_dir

    now = time.time()
    records = store.list()
    names = {r.name for r in records}
    items: list[Garbage] = []

    def quiet(p: Path) -> bool:
        return now - _last_touched(p) >= quiet_s

    for p in sorted(store.tmp_dir.iterdir()):
        if p.suffix != ".lock" and quiet(p):
            items.append(Garbage(p, "tmp", _size(p), "staging debris left by an interrupted command"))

    indexed = {r.path.resolve() for r in records}
    for folder in sorted(store.models_dir.glob("*/v*")):
        if folder.is_dir() and folder.resolve() not in indexed and quiet(folder):
            items.append(Garbage(folder, "artifact", _size(folder), "an artifact folder with no index entry"))

    live_cache, stale_cache = [], []
    cache_dir = pipelines_dir(store) / "cache"
    for entry in sorted(cache_dir.glob("*.json")) if cache_dir.is_dir() else []:
        (live_cache if cached(store, entry.stem) is not None else stale_cache).append(entry)
    # what a model's recipe or a live cache entry names (e.g. the synthetic data a distill run made)
    named = json.dumps([r.recipe for r in records], default=str) + "".join(
        p.read_text(encoding="utf-8", errors="replace") for p in live_cache
    )
    runs = store.home / "runs"
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        kind, _, name = folder.name.partition("-")
        if (kind in RUN_KINDS and name in names) or str(folder) in named or not quiet(folder):
            continue
        interrupted = (folder / "checkpoints").is_dir() and not (folder / "result.json").exists()
        why = ("the checkpoints of an interrupted run whose model was never registered" if interrupted
               else "a run folder of a model no longer in the store")
        items.append(Garbage(folder, "run", _size(folder), why))
    for entry in stale_cache:
        items.append(Garbage(entry, "cache", _size(entry), "a pipeline cache entry whose outputs are gone"))
    return items


def gc(store: ModelStore | None = None, *, dry_run: bool = False, quiet_s: float = QUIET_S) -> GcResult:
    """Report (``dry_run``) or remove what :func:`find_garbage` finds."""
    store = store or ModelStore()
    result = GcResult(store.home, dry_run, find_garbage(store, quiet_s=quiet_s))
    if not dry_run:
        for g in result.items:
            if g.path.is_dir():
                shutil.rmtree(g.path, ignore_errors=True)
            else:
                g.path.unlink(missing_ok=True)
        for parent in {g.path.parent for g in result.items if g.kind == "artifact"}:
            with contextlib.suppress(OSError):
                parent.rmdir()  # models/NAME/ once its last folder went
    return result
