"""The shared file helpers: atomic writes leave the old file or the new one, never a stray
temporary; one hash function for every file digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from slmops.files import atomic_path, file_sha256, write_atomic, write_json_atomic


def test_writes_text_bytes_and_json_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    write_atomic(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "a.json", {"p": Path("x"), "n": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"p": "x", "n": 1}
    assert (tmp_path / "a.json").read_text().endswith("}\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "a.txt", "sub"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = b"x" * (3 << 20) + b"tail"
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
