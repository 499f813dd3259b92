"""Read records from JSONL, JSON, CSV or Parquet, with errors that name the file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slmops.errors import DataError
from slmops.files import atomic_path

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a data file as dicts; the format follows the file suffix."""
    return [rec for _, rec in read_located(path)]


def read_located(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Records paired with where they came from (``file, line N`` or ``file, record N``),
    for error messages that point at the offending row."""
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.", "Check the path.")
    suffix = path.suffix.lower()
    try:
        return _read_located(path, suffix)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}).",
            "Save the file as UTF-8 (e.g. in PowerShell use `Out-File -Encoding utf8`, not `>`).",
        ) from exc


def _read_located(path: Path, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    if suffix == ".jsonl":
        located = [(f"{path}, line {n}", rec) for n, rec in _read_jsonl(path)]
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            records = [dict(r) for r in csv.DictReader(fh)]
    elif suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported data format {suffix!r}.", f"Use one of {', '.join(SUFFIXES)}.")
    if suffix != ".jsonl":
        located = [(f"{path}, record {n}", rec) for n, rec in enumerate(records, 1)]
    if not located:
        raise DataError(f"{path} holds no records.", "Add at least one record.")
    return located


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}).",
                    'Each line must be one JSON object, e.g. {"prompt": "..."}.',
                ) from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}.",
                    'Each line must be one JSON object, e.g. {"prompt": "..."}.',
                )
            yield lineno, obj


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).", "Fix the JSON syntax.") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects.", 'Use [{"prompt": ...}, ...] or JSONL.')
    return data


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"Reading {path} needs pyarrow.", "Install it with `pip install pyarrow`.") from exc
    return pq.read_table(path).to_pylist()


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records to ``path`` through a temporary file and a rename; returns the count."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1
    return count
