"""Request logs: PII redaction before disk, size-based rotation, and `data from-logs`."""

from __future__ import annotations

import json

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from slmops.cli import data as data_cmds
from slmops.cli import serve as serve_cmds
from slmops.data.prompts import read_prompt_file
from slmops.engines.base import GenerationParams
from slmops.serve import ServeConfig, create_app
from slmops.serve.reqlog import RequestLog, prompts_from_logs, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call +1 (555) 123-4567 now", "call [PHONE] now"),
        ("or 020 7946 0958, or 555-123-4567", "or [PHONE], or [PHONE]"),
        ("card 4111 1111 1111 1111 exp", "card [CARD] exp"),
        ("card 5500-0000-0000-0004.", "card [CARD]."),
        ("from 192.168.10.200 and 8.8.8.8", "from [IP] and [IP]"),
        ("v6 2001:db8::8a2e:370:7334 and ::1", "v6 [IP] and [IP]"),
        ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full [IP]"),
    ],
)
def test_each_pii_kind_is_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["on 2024-01-15 at 12:30:45", "version 1.2.3 of 3.14", "order 12345, 42 apples", "1234 5678 9012 3456 (no Luhn)"],
)
def test_ordinary_numbers_are_kept(text):
    assert redact(text) == text


def test_log_rotates_by_size_and_keeps_backups(tmp_path):
    log = RequestLog(tmp_path / "req.jsonl", max_bytes=1024, backups=2)
    for i in range(60):
        log.write({"status": 200, "prompt": f"request {i} " + "x" * 40})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["req.jsonl", "req.jsonl.1", "req.jsonl.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    prompts = [r["prompt"] for r in prompts_from_logs([tmp_path / "req.jsonl"])]
    assert prompts[-1].startswith("request 59 ") and len(prompts) < 60  # the oldest rotated away


def test_server_logs_are_redacted_before_disk_and_round_trip(serve_store, tmp_path):
    log_path = tmp_path / "logs" / "requests.jsonl"
    secret = "Mail bob@example.com or call 555-123-4567 from 10.0.0.7"
    with TestClient(create_app(serve_store, ServeConfig(threads=1, request_log=log_path))) as c:
        for content in (secret, secret, "What is 2+2?"):
            msgs = [{"role": "user", "content": content}]
            assert c.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs, "max_tokens": 4}).is_success
        c.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0})
        c.post("/v1/chat/completions", json={"model": "tiny", "messages": [], "max_tokens": 2})  # 400: not logged
    raw = log_path.read_text()
    assert "bob@example.com" not in raw and "555-123-4567" not in raw and "10.0.0.7" not in raw
    entries = [json.loads(line) for line in raw.splitlines()]
    assert len(entries) == 4 and {e["status"] for e in entries} == {200}
    assert entries[0]["messages"][0]["content"] == "Mail [EMAIL] or call [PHONE] from [IP]"
    assert entries[0]["version"] == "tiny:2" and entries[0]["usage"]["completion_tokens"] <= 4

    out = tmp_path / "prompts.jsonl"
    app = typer.Typer()
    app.command()(data_cmds.from_logs)
    result = CliRunner().invoke(app, [str(log_path), "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["records"] == 3  # the repeated prompt once
    pairs = read_prompt_file(out, GenerationParams())
    assert [rec.get("prompt") for rec, _ in pairs] == [None, None, "Hello"]
    assert pairs[0][1].messages[0].content == "Mail [EMAIL] or call [PHONE] from [IP]"


def test_from_logs_on_a_missing_file_is_a_clean_error(tmp_path):
    app = typer.Typer()
    app.command()(data_cmds.from_logs)
    result = CliRunner().invoke(app, [str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0 and "no such request log" in str(result.exception)


def test_serve_command_builds_the_config_and_binds_localhost(monkeypatch, home):
    seen = {}
    monkeypatch.setattr("slmops.serve.runner.run", lambda app, host, port: seen.update(app=app, host=host, port=port))
    monkeypatch.setenv("SLMOPS_API_KEY", "from-the-environment")
    app = typer.Typer()
    app.command()(serve_cmds.serve)
    result = CliRunner().invoke(app, ["--max-batch-size", "4", "--cors-origin", "https://a.example", "--port", "9001"])
    assert result.exit_code == 0, result.output
    config = seen["app"].state.config
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9001)
    assert config.api_key == "from-the-environment" and config.max_batch_size == 4
    assert config.cors_origins == ("https://a.example",)
