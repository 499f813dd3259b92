"""Opt-in JSONL request logs with PII redaction, and the feedback loop back to a dataset.

Every string in a log record passes :func:`redact` before the line is written, so e-mail
addresses, phone numbers, card numbers and IP addresses never reach the disk. Files rotate
by size (``requests.jsonl`` → ``requests.jsonl.1`` → ...). :func:`prompts_from_logs` turns
logged traffic into a prompts file that ``slmops generate``/distillation read.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slmops.errors import DataError
from slmops.files import atomic_path

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w)")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    return "[CARD]" if _luhn(digits) else m.group()


def _ip(version: int) -> Any:
    def sub(m: re.Match[str]) -> str:
        try:
            ok = ipaddress.ip_address(m.group()).version == version
        except ValueError:
            ok = False
        return "[IP]" if ok else m.group()

    return sub


def _phone(m: re.Match[str]) -> str:
    text = m.group()
    digits = sum(c.isdigit() for c in text)
    looks_like_phone = 7 <= digits <= 15 and (not text.isdigit() or text.startswith("+") or digits >= 10)
    return "[PHONE]" if looks_like_phone and not _DATE.match(text.strip()) else text


def redact(text: str) -> str:
    """Replace e-mail addresses, card numbers (Luhn-valid), IPv4/IPv6 addresses and phone
    numbers with ``[EMAIL]``, ``[CARD]``, ``[IP]`` and ``[PHONE]``."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    text = _IPV6.sub(_ip(6), text)
    text = _IPV4.sub(_ip(4), text)
    return _PHONE.sub(_phone, text)


def redact_obj(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


class RequestLog:
    """Append-only JSONL with size-based rotation; safe to call from several threads."""

    def __init__(self, path: Path, *, max_bytes: int = 10 << 20, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(redact_obj(record), ensure_ascii=False) + "\n").encode()
        with self._lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()


def log_files(paths: Iterable[Path]) -> list[Path]:
    """Each given log with its rotated siblings, oldest first."""
    out: list[Path] = []
    for p in paths:
        rotated = sorted(
            p.parent.glob(f"{p.name}.*"), key=lambda q: -int(q.suffix[1:]) if q.suffix[1:].isdigit() else 0
        )
        out += [q for q in rotated if q.suffix[1:].isdigit()] + ([p] if p.exists() else [])
        if not p.exists() and not rotated:
            raise DataError(f"{p}: no such request log.", "Give the file the server wrote with --request-log.")
    return out


def prompts_from_logs(paths: Iterable[Path], *, only_ok: bool = True, dedupe: bool = True) -> Iterator[dict[str, Any]]:
    """Prompt records (``messages`` or ``prompt``) from request logs: successful requests only
    by default, each distinct prompt once."""
    seen: set[str] = set()
    for path in log_files(paths):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from exc
                if only_ok and entry.get("status") != 200:
                    continue
                rec = {k: entry[k] for k in ("messages", "prompt") if entry.get(k)}
                if not rec:
                    continue
                fingerprint = json.dumps(rec, sort_keys=True)
                if dedupe and fingerprint in seen:
                    continue
                seen.add(fingerprint)
                yield rec


def write_prompts(paths: Iterable[Path], output: Path, **kwargs: Any) -> int:
    """Write :func:`prompts_from_logs` to a JSONL file atomically; returns the record count."""
    count = 0
    with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as f:
        for rec in prompts_from_logs(paths, **kwargs):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1
    return count
