"""The local model store: artifact folders plus an SQLite index (WAL).

Layout under ``$SLMOPS_HOME`` (default ``~/.slmops``)::

    index.db                 name, version, format, size, parents, recipe, metrics, aliases
    models/NAME/vVERSION/    one immutable artifact folder per version
    runs/KIND-NAME/          the run that made model NAME (finetune checkpoints, search trials,
                             distill training data); removed with the last version of NAME
    tmp/                     staging folders; a crash leaves debris here, never in models/

Every write stages a complete folder under ``tmp/`` and then renames it into place under a
file lock, and only then inserts the index row; a reader never sees a half-written model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from slmops.errors import ModelNotFoundError, SlmopsError
from slmops.models.refs import ModelRef, parse_ref, suggest, validate_alias, validate_name

Format = Literal["hf", "peft-adapter", "onnx-genai", "gguf"]
FORMATS: tuple[str, ...] = ("hf", "peft-adapter", "onnx-genai", "gguf")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    parameters INTEGER,
    parents TEXT NOT NULL DEFAULT '[]',
    recipe TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS version_counters (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
"""


# runs/KIND-NAME/ folders belong to model NAME (see train/, distill/): they go with its last version
RUN_KINDS = ("finetune", "search", "distill")


def default_home() -> Path:
    return Path(os.environ.get("SLMOPS_HOME") or Path.home() / ".slmops").expanduser()


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    format: str
    path: Path
    size_bytes: int
    parameters: int | None
    parents: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    created_at: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def base(self) -> str | None:
        """For an adapter, the ``name:version`` of the base model it was trained on."""
        return self.parents[0] if self.format == "peft-adapter" and self.parents else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["ref"] = self.ref
        return data


class ModelStore:
    """Typed access to the store. Safe to use from several processes at once."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).expanduser() if home else default_home()
        self.models_dir = self.home / "models"
        self.tmp_dir = self.home / "tmp"
        for d in (self.models_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.home / "store.lock"), timeout=600)
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # WAL is a property of the file: switch once, under the write lock. Two processes
                # switching at the same moment get SQLITE_BUSY without the busy handler's wait.
                with self._lock:
                    db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    # -- connections -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.home / "index.db", timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        finally:
            db.close()

    def lock(self, key: str | None = None) -> FileLock:
        """The store-wide write lock, or a named lock (e.g. one per model being pulled)."""
        if key is None:
            return self._lock
        return FileLock(str(self.tmp_dir / f"{validate_name(key, 'lock name')}.lock"), timeout=3600)

    # -- staging ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self, label: str = "stage") -> Iterator[Path]:
        """A fresh folder under ``tmp/`` on the store's file system; removed afterwards
        (after :meth:`add` has moved its content into place, or after a failure)."""
        path = self.tmp_dir / f"{label}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clean_tmp(self, older_than_s: float = 6 * 3600) -> int:
        """Remove staging debris left by killed processes; returns how many entries went."""
        removed = 0
        now = time.time()
        for p in self.tmp_dir.iterdir():
            if p.suffix == ".lock" or now - p.stat().st_mtime < older_than_s:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
        return removed

    # -- writes ----------------------------------------------------------------------------
    def add(
        self,
        staged: Path,
        name: str,
        format: Format,
        *,
        parents: list[str] | None = None,
        recipe: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        parameters: int | None = None,
    ) -> ModelRecord:
        """Move a complete staged folder into the store as the next version of ``name``."""
        validate_name(name)
        if format not in FORMATS:
            raise SlmopsError(f"Unknown model format {format!r}.", f"Use one of: {', '.join(FORMATS)}.")
        size = folder_size(staged)
        with self._lock, self._connect() as db:
            # numbers are never reused, so a removed version's ref can never point at another model
            row = db.execute(
                "SELECT MAX(COALESCE((SELECT last_version FROM version_counters WHERE name = ?), 0),"
                " COALESCE((SELECT MAX(version) FROM models WHERE name = ?), 0))",
                (name, name),
            ).fetchone()
            version = row[0] + 1
            final = self.models_dir / name / f"v{version}"
            if final.exists():  # debris of a process killed between rename and insert
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            staged.mkdir()  # keep the staging context's cleanup a no-op
            created = datetime.now(UTC).isoformat(timespec="seconds")
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO version_counters (name, last_version) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET last_version = excluded.last_version",
                (name, version),
            )
            db.execute(
                "INSERT INTO models (name, version, format, path, size_bytes, parameters, parents, recipe, metrics,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    format,
                    str(final.relative_to(self.home)),
                    size,
                    parameters,
                    json.dumps(parents or []),
                    json.dumps(recipe or {}, default=str),
                    json.dumps(metrics or {}, default=str),
                    created,
                ),
            )
            db.execute("COMMIT")
        return self.get(f"{name}:{version}")

    def update_metrics(self, ref: str | ModelRef, metrics: dict[str, Any]) -> ModelRecord:
        """Merge ``metrics`` into a record's metrics (used by eval and optimize)."""
        rec = self.get(ref)
        merged = {**rec.metrics, **metrics}
        with self._lock, self._connect() as db:
            db.execute(
                "UPDATE models SET metrics = ? WHERE name = ? AND version = ?",
                (json.dumps(merged, default=str), rec.name, rec.version),
            )
        return self.get(rec.ref)

    def set_alias(self, ref: str | ModelRef, alias: str) -> ModelRecord:
        """Point ``name@alias`` at the referenced version (moving it if it pointed elsewhere)."""
        validate_alias(alias)
        rec = self.get(ref)
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
                "ON CONFLICT(name, alias) DO UPDATE SET version = excluded.version",
                (rec.name, alias, rec.version),
            )
        return self.get(rec.ref)

    def remove_alias(self, name: str, alias: str) -> None:
        with self._lock, self._connect() as db:
            cur = db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        if cur.rowcount == 0:
            raise ModelNotFoundError(f"No alias {name}@{alias}.", "`slmops models show NAME` lists its aliases.")

    def remove(self, ref: str | ModelRef, *, force: bool = False) -> list[ModelRecord]:
        """Remove one version (``name:version``/``name@alias``) or every version (``name``).

        Refuses to remove a model that other models name as their parent (an adapter's base)
        unless ``force``. The index row goes first, then the folder, so a crash leaves only
        an unreferenced folder behind, never a row pointing at nothing.
        """
        parsed = parse_ref(ref, allow_path=False) if isinstance(ref, str) else ref
        if parsed.path is not None:
            raise SlmopsError("`models rm` takes a store reference, not a path.", "Use NAME or NAME:VERSION.")
        targets = self.versions(parsed.name) if parsed.version is None and parsed.alias is None else [self.get(parsed)]
        if not targets:
            raise ModelNotFoundError(
                f"No model named {parsed.name!r} in the store.", suggest(str(parsed.name), self.names())
            )
        gone = {t.ref for t in targets}
        children = [r for r in self.list() if r.ref not in gone and set(r.parents) & gone]
        if children and not force:
            names = ", ".join(c.ref for c in children)
            raise SlmopsError(
                f"Cannot remove {parsed}: {names} depend on it.",
                "Remove those first, or pass --force to remove anyway.",
            )
        with self._lock, self._connect() as db:
            for t in targets:
                db.execute("DELETE FROM models WHERE name = ? AND version = ?", (t.name, t.version))
                db.execute("DELETE FROM aliases WHERE name = ? AND version = ?", (t.name, t.version))
        for t in targets:
            self._discard(t.path)
        with contextlib.suppress(OSError):
            (self.models_dir / str(parsed.name)).rmdir()
        if not self.versions(parsed.name):
            for folder in self.run_folders(str(parsed.name)):
                self._discard(folder)
        return targets

    def run_folders(self, name: str) -> list[Path]:
        """The ``runs/KIND-NAME/`` folders of model ``name`` that exist (removed with its last version)."""
        return [f for kind in RUN_KINDS if (f := self.home / "runs" / f"{kind}-{name}").is_dir()]

    def _discard(self, path: Path) -> None:
        """Remove a folder by renaming it into tmp/ first, so a crash never leaves half of it in place."""
        trash = self.tmp_dir / f"trash-{uuid.uuid4().hex[:12]}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- reads -----------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row, aliases: list[str]) -> ModelRecord:
        return ModelRecord(
            name=row["name"],
            version=row["version"],
            format=row["format"],
            path=self.home / row["path"],
            size_bytes=row["size_bytes"],
            parameters=row["parameters"],
            parents=json.loads(row["parents"]),
            recipe=json.loads(row["recipe"]),
            metrics=json.loads(row["metrics"]),
            aliases=aliases,
            created_at=row["created_at"],
        )

    def _query(self, where: str = "", args: tuple[Any, ...] = ()) -> list[ModelRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM models {where} ORDER BY name, version", args).fetchall()
            alias_rows = db.execute("SELECT name, alias, version FROM aliases ORDER BY alias").fetchall()
        aliases: dict[tuple[str, int], list[str]] = {}
        for a in alias_rows:
            aliases.setdefault((a["name"], a["version"]), []).append(a["alias"])
        return [self._record(r, aliases.get((r["name"], r["version"]), [])) for r in rows]

    def list(self) -> list[ModelRecord]:
        return self._query()

    def names(self) -> list[str]:
        return sorted({r.name for r in self.list()})

    def versions(self, name: str | None) -> list[ModelRecord]:
        return self._query("WHERE name = ?", (name,))

    def find(self, ref: str | ModelRef) -> ModelRecord | None:
        """Like :meth:`get` but returns ``None`` when nothing matches."""
        try:
            return self.get(ref)
        except ModelNotFoundError:
            return None

    def get(self, ref: str | ModelRef) -> ModelRecord:
        """Resolve ``name`` (latest version), ``name:version`` or ``name@alias``."""
        parsed = parse_ref(ref, allow_path=False) if isinstance(ref, str) else ref
        if parsed.path is not None:
            raise SlmopsError(
                f"{parsed.path} is a path, not a store reference.", "Import it with `slmops models import`."
            )
        name = str(parsed.name)
        if parsed.alias is not None:
            with self._connect() as db:
                row = db.execute(
                    "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, parsed.alias)
                ).fetchone()
            if row is None:
                raise ModelNotFoundError(
                    f"No alias {name}@{parsed.alias} in the store.",
                    f"Set it with `slmops models alias {name} {parsed.alias}`.",
                )
            parsed = ModelRef(name=name, version=row[0])
        recs = self.versions(name)
        if parsed.version is not None:
            recs = [r for r in recs if r.version == parsed.version]
            if not recs:
                known = ", ".join(str(r.version) for r in self.versions(name)) or "none"
                raise ModelNotFoundError(f"No version {parsed.version} of {name!r} (versions: {known}).")
        if not recs:
            from slmops.models.catalog import CATALOG

            raise ModelNotFoundError(
                f"Unknown model {name!r}.", suggest(name, sorted(set(self.names()) | set(CATALOG)))
            )
        return recs[-1]
