"""Read records from JSONL, JSON, CSV or Parquet, with errors that name the file and line.

Every problem with a data file is a :class:`DataError` naming the file and, where there is
one, the line: a directory or unreadable path, text that is not UTF-8 (UTF-16 included), a
JSON string holding a lone surrogate escape (not text), a CSV row with more or fewer fields
than its header or a header naming a column twice (which would drop or merge a field).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slmops.errors import DataError
from slmops.files import atomic_path

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_UTF16_32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SAVE_AS_UTF8 = "Save the file as UTF-8 (e.g. in PowerShell use `Out-File -Encoding utf8`, not `>`)."


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a data file as dicts; the format follows the file suffix."""
    return [rec for _, rec in read_located(path)]


def read_located(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Records paired with where they came from (``file, line N`` or ``file, record N``),
    for error messages that point at the offending row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.", "Check the path.")
    if path.is_dir():
        raise DataError(
            f"Data file {path} is a directory.",
            f"Give one data file ({', '.join(SUFFIXES)}) inside it, e.g. {path}/train.jsonl.",
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported data format {suffix!r}.", f"Use one of {', '.join(SUFFIXES)}.")
    try:
        located = _read_located(path, suffix)
    except OSError as exc:
        raise DataError(
            f"Cannot read data file {path}: {exc.strerror or exc}.", "Check the path and its permissions."
        ) from exc
    if not located:
        raise DataError(f"{path} holds no records.", "Add at least one record.")
    for where, rec in located:
        _check_text(rec, where)
    return located


def _read_located(path: Path, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    if suffix == ".parquet":
        return [(f"{path}, record {n}", rec) for n, rec in enumerate(_read_parquet(path), 1)]
    text = _read_text(path)
    if suffix == ".jsonl":
        return [(f"{path}, line {n}", rec) for n, rec in _read_jsonl(path, text)]
    if suffix == ".csv":
        return [(f"{path}, line {n}", rec) for n, rec in _read_csv(path, text)]
    return [(f"{path}, record {n}", rec) for n, rec in enumerate(_read_json(path, text), 1)]


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a leading byte-order mark is dropped), else an error naming the line."""
    data = path.read_bytes()
    if data.startswith(_UTF16_32_BOMS):
        kind = "UTF-32" if data[:4] in _UTF16_32_BOMS[:2] else "UTF-16"
        raise DataError(
            f"{path}, line 1: the file is {kind} text (it starts with a {kind} byte-order mark), not UTF-8.",
            _SAVE_AS_UTF8,
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte {exc.start}, column {column}: {exc.reason}).", _SAVE_AS_UTF8
        ) from exc
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(
            f"{path}, line {line}: holds NUL bytes (UTF-16 text without a byte-order mark?).", _SAVE_AS_UTF8
        )
    return text


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # split on "\n" only: JSON strings may hold U+2028 and friends, which str.splitlines() would split at
    for lineno, line in enumerate(text.split("\n"), 1):
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


def _read_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).", "Fix the JSON syntax.") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects.", 'Use [{"prompt": ...}, ...] or JSONL.')
    return data


def _read_csv(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as dicts keyed by the header, each with the line it starts on; a row whose field
    count differs from the header's is an error (never a dropped, merged or empty field)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            return
        blank = [n for n, name in enumerate(header, 1) if not name.strip()]
        if blank:
            raise DataError(
                f"{path}, line {reader.line_num}: header column {blank[0]} has no name.",
                "Name every column in the header.",
            )
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(
                f"{path}, line {reader.line_num}: the header names column {twice[0]!r} more than once.",
                "Give every column its own name.",
            )
        start = reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                more = "more" if len(row) > len(header) else "fewer"
                fields = f"{len(row)} field{'s' * (len(row) != 1)}"
                raise DataError(
                    f"{path}, line {start}: {fields}, {more} than the header's {len(header)} ({', '.join(header)}).",
                    'Quote fields that hold a comma ("a, b") or fix the row.',
                )
            if row:
                yield start, dict(zip(header, row, strict=True))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(
            f"{path}, line {reader.line_num}: not valid CSV ({exc}).", "Fix the quoting on that line."
        ) from exc


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            f"Reading {path} needs pyarrow, from the parquet extra.", "Install it: pip install 'slmops[parquet]'."
        ) from exc
    import pyarrow as pa

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable Parquet file ({exc}).", "Check the file, or convert it to JSONL."
        ) from exc


def _check_text(value: Any, where: str, at: str = "") -> None:
    """Refuse strings that are not Unicode text: JSON's ``\\ud800`` escape decodes to a lone
    surrogate, which no tokenizer, file or HTTP body can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{where}: {f'field {at!r}' if at else 'a field name'} holds a lone surrogate "
                f"{value[exc.start]!r} (character {exc.start + 1}), which is not text.",
                "A \\uD800-\\uDFFF escape must come as a high+low pair (e.g. \\ud83d\\ude00); fix or drop it.",
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where, "")
            _check_text(item, where, f"{at}.{key}" if at else str(key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_text(item, where, f"{at}[{n}]")


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records to ``path`` through a temporary file and a rename; returns the count."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1
    return count
