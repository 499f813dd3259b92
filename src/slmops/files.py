"""File helpers every layer uses: atomic writes and file hashing.

An atomic write goes to a temporary file beside the target (same folder, so the rename stays
on one file system), is flushed to disk, then renamed over the target: a reader sees the old
file or the new one, never half of one, and a killed process leaves at most a stray
``.NAME.tmp-PID`` (removed on failure).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (by any writer: a file
    handle, ``safetensors.save_file``, ...); on success it replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """``data`` as JSON (non-JSON values via ``str``), newline-terminated, written atomically."""
    write_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
