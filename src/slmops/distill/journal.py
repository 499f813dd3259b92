"""The synthetic data files: append-only JSONL that survives ``kill -9`` at any moment.

Accepted records go to the output file, rejected ones (with their ``reason``) to
``<stem>.rejected.jsonl`` beside it. Every line carries a ``key``: a hash of the input record,
the recipe and the sample index. A batch is appended with one ``write`` per file (rejected
first, then accepted), each followed by ``fsync``; a key is finished once it is in either
file. On ``--resume`` a torn final line (a write cut short by the kill) is cut off, the
finished keys are read back, and only the missing samples are generated, so every sample of
every input ends up in exactly one line.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.distill.filters import VOTE_REASONS
from slmops.distill.recipes import canonical
from slmops.errors import DataError, SlmopsError

_CHUNK = 1 << 16


def side_path(output: Path, suffix: str) -> Path:
    """``synthetic.jsonl`` → ``synthetic.<suffix>`` (e.g. ``synthetic.rejected.jsonl``)."""
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.{suffix}")


@dataclass(frozen=True)
class Entry:
    """What a resumed run needs to know about one finished sample."""

    input_key: str
    sample: int
    answer: str | None
    reason: str | None  # None: accepted
    dedup: str | None


def repair_torn_tail(path: Path) -> int:
    """Cut an unterminated final line off ``path``; returns the bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            fh.seek(start)
            block = fh.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            cut = block.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        fh.truncate(end)
        fh.flush()
        os.fsync(fh.fileno())
    return size - end


def read_lines(path: Path, *, skip_torn: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every line of a journal file; ``skip_torn`` ignores an
    unterminated final line (a run still writing, or killed) instead of failing on it."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if skip_torn and not raw.endswith(b"\n"):
                return
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                    raise ValueError("not a synthetic record with a 'key'")
            except ValueError as exc:
                raise DataError(
                    f"{path}, line {lineno}: {exc}.",
                    "The file was edited or is not slmops synthetic data; fix or remove that line, then resume.",
                ) from exc
            yield lineno, rec


def _append(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    if not lines:
        return
    data = memoryview("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The output file and its rejected side file, with the index of finished keys."""

    def __init__(self, output: Path, *, resume: bool, recipe_hash: str) -> None:
        self.output = output
        self.rejected = side_path(output, "rejected.jsonl")
        self.entries: dict[str, Entry] = {}
        self.by_input: dict[str, list[Entry]] = {}
        self.torn_bytes = 0
        existing = [p for p in (self.output, self.rejected) if p.exists() and p.stat().st_size > 0]
        if existing and not resume:
            raise SlmopsError(
                f"{existing[0]} already holds synthetic records.",
                "Pass --resume to continue that run, or choose another --output (or delete the old files).",
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.rejected, self.output):
            self.torn_bytes += repair_torn_tail(path)
            for lineno, rec in read_lines(path):
                self._load(path, lineno, rec, recipe_hash)
        _fsync_dir(output.parent)

    def _load(self, path: Path, lineno: int, rec: dict[str, Any], recipe_hash: str) -> None:
        key = rec["key"]
        if rec.get("recipe") != recipe_hash:
            raise SlmopsError(
                f"{path}, line {lineno} was generated with other settings (recipe {rec.get('recipe')!r}, "
                f"now {recipe_hash!r}).",
                "Resume with the same teacher, task, recipe and sampling options, or write to another --output.",
            )
        if key in self.entries:
            raise DataError(f"{path}, line {lineno}: key {key} is already finished in {self.output.name} or "
                            f"{self.rejected.name}.", "Remove the duplicate line, then resume.")
        self._index(rec)

    def _index(self, rec: dict[str, Any]) -> None:
        entry = Entry(str(rec.get("input_key", "")), int(rec.get("sample", 0)), rec.get("answer"), rec.get("reason"),
                      rec.get("dedup"))
        self.entries[rec["key"]] = entry
        self.by_input.setdefault(entry.input_key, []).append(entry)

    def done(self, key: str) -> bool:
        return key in self.entries

    def prior_answers(self, input_key: str) -> list[str | None]:
        """Answers of an input's finished samples that passed every per-sample check (for the vote)."""
        return [e.answer for e in self.by_input.get(input_key, []) if e.reason is None or e.reason in VOTE_REASONS]

    def accepted_dedup_keys(self) -> set[str]:
        return {e.dedup for e in self.entries.values() if e.reason is None and e.dedup}

    def append(self, accepted: Sequence[dict[str, Any]], rejected: Sequence[dict[str, Any]]) -> None:
        """Write one batch durably: rejected lines, then accepted lines, each file fsynced."""
        _append(self.rejected, rejected)
        _append(self.output, accepted)
        for rec in [*rejected, *accepted]:
            self._index(rec)

    def counts(self) -> dict[str, int]:
        """Accepted records and rejections by reason, over both files (every run so far)."""
        reasons = Counter(e.reason for e in self.entries.values())
        return {"accepted": reasons.pop(None, 0), **{str(k): v for k, v in sorted(reasons.items())}}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_saved_recipe(recipe_file: Path, settings: dict[str, Any], resume: bool) -> None:
    """On --resume, name the settings that differ from the interrupted run's."""
    if not resume or not recipe_file.exists():
        return
    try:
        saved = json.loads(recipe_file.read_text(encoding="utf-8")).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the per-line recipe hashes still guard the resume
    changed = sorted(k for k in set(saved) | set(settings) if canonical(saved.get(k)) != canonical(settings.get(k)))
    if changed:
        raise SlmopsError(
            f"Cannot resume {recipe_file.name}: these settings differ from the interrupted run: {', '.join(changed)}.",
            "Resume with the same settings, or write to another --output.",
        )
