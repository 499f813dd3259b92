"""A remote teacher: `slmops distill generate` against a local OpenAI-compatible HTTP server,
with failing requests retried, bounded concurrency, and a resume after a hard failure."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slmops.cli.distill import app
from slmops.errors import SlmopsError
from tests.test_distill_generate import TICKETS, lines, write_rows
from tests.test_remote_engine import Failure, FakeOpenAI, Handler

THANKS = [{**t, "prompt": t["prompt"] + " Thanks."} for t in TICKETS]
GOLD = {t["prompt"]: t["answer"] for t in TICKETS + THANKS}
RETRY_NOW = {"retry-after-ms": "10"}  # no backoff wait in the test


def _label(body: dict[str, Any]) -> str:
    question = body["messages"][-1]["content"].split("\n")[0]  # the ticket comes before the instruction
    return GOLD[question].upper()  # upper case: label normalisation must map it back


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeOpenAI, str]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeOpenAI(reply=_label, delay=lambda body: 0.05)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.fake, f"http://127.0.0.1:{httpd.server_address[1]}/v1#big-teacher"  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def _invoke(tmp_path: Path, teacher: str, *extra: str):
    data = write_rows(tmp_path / "tickets.jsonl", TICKETS * 2 + [{"prompt": t["prompt"]} for t in THANKS])
    args = ["generate", "--teacher", teacher, "--data", str(data), "--task", "classification", "--labels",
            "billing,technical,account", "--output", str(tmp_path / "synthetic.jsonl"), "--json", *extra]
    return CliRunner().invoke(app, args)


def test_remote_teacher_with_retries_and_bounded_concurrency(tmp_path: Path, fake) -> None:
    server, teacher = fake
    server.failures = [Failure(500, {"error": {"message": "overloaded"}}, RETRY_NOW),
                       Failure(429, {"error": {"message": "slow down"}}, RETRY_NOW)]
    result = _invoke(tmp_path, teacher, "--concurrency", "3", "--batch-size", "8", "--rps", "500")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # 12 records, 4 of them repeats of earlier ones: 8 inputs, each answered once, after 2 retried failures
    assert (summary["inputs"], summary["duplicate_inputs"], summary["counts"]) == (8, 4, {"accepted": 8})
    assert len(server.calls) == 8 + 2
    assert 1 < server.max_in_flight <= 3
    body = server.calls[-1].body
    assert body["model"] == "big-teacher" and body["messages"][0]["role"] == "system"
    assert body["max_tokens"] == 16 and isinstance(body["seed"], int)
    rows = lines(tmp_path / "synthetic.jsonl")
    assert {r["teacher"] for r in rows} == {teacher}
    assert sorted(r["completion"] for r in rows) == sorted(["billing", "technical", "account", "billing"] * 2)


def test_a_hard_failure_keeps_finished_batches_and_resume_completes(tmp_path: Path, fake) -> None:
    server, teacher = fake
    server.failures = [Failure(400, {"error": {"message": "bad request"}})]  # not retried
    failed = _invoke(tmp_path, teacher, "--batch-size", "4", "--concurrency", "1")
    assert isinstance(failed.exception, SlmopsError)
    assert "bad request" in str(failed.exception) and "--resume" in str(failed.exception)
    assert not (tmp_path / "synthetic.jsonl").exists()  # the failed batch wrote nothing
    server.failures = []
    first = _invoke(tmp_path, teacher, "--batch-size", "4", "--resume")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["counts"] == {"accepted": 8}
    calls = len(server.calls)
    again = _invoke(tmp_path, teacher, "--batch-size", "4", "--resume")
    assert json.loads(again.stdout)["generated"] == 0 and len(server.calls) == calls  # nothing asked twice
