"""Teacher fan-out: `distill generate --teacher URL1,URL2` spreads requests over real local HTTP
servers with bounded concurrency per endpoint; a request that fails on one endpoint is retried on
another, and the journal still holds every input exactly once."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.engines.fanout import FanoutEngine
from slmops.engines.remote import RemoteEngine
from slmops.errors import EngineError
from tests.test_distill_generate import TICKETS, lines
from tests.test_distill_remote import _invoke, _label
from tests.test_remote_engine import Failure, FakeOpenAI, Handler

RETRY_NOW = {"Retry-After": "0"}


@pytest.fixture()
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[FakeOpenAI, str]]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out, httpds = [], []
    for _ in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.fake = FakeOpenAI(reply=_label, delay=lambda body: 0.03)  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        httpds.append(httpd)
        out.append((httpd.fake, f"http://127.0.0.1:{httpd.server_address[1]}/v1#teacher"))  # type: ignore[attr-defined]
    yield out
    for httpd in httpds:
        httpd.shutdown()
        httpd.server_close()


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1#teacher"


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _exactly_once(tmp_path: Path) -> list[dict]:
    rows = lines(tmp_path / "synthetic.jsonl")
    keys = [r["key"] if "key" in r else json.dumps(r["messages"]) for r in rows]
    assert len(keys) == len(set(keys))
    return rows


def test_two_endpoints_share_the_work_with_bounded_concurrency_each(tmp_path: Path, servers) -> None:
    (a, url_a), (b, url_b) = servers
    summary = _summary(_invoke(tmp_path, f"{url_a},{url_b}", "--concurrency", "2", "--batch-size", "8"))
    assert summary["counts"] == {"accepted": 8}
    assert len(a.calls) + len(b.calls) == 8 and a.calls and b.calls
    assert a.max_in_flight <= 2 and b.max_in_flight <= 2
    assert len(_exactly_once(tmp_path)) == 8


def test_a_dead_endpoint_is_skipped_and_its_requests_go_to_the_other(tmp_path: Path, servers) -> None:
    (a, url_a), _ = servers
    summary = _summary(_invoke(tmp_path, f"{_dead_url()},{url_a}", "--concurrency", "3", "--batch-size", "4"))
    assert summary["counts"] == {"accepted": 8}
    assert len(a.calls) == 8
    assert len(_exactly_once(tmp_path)) == 8


def test_failures_on_one_endpoint_are_retried_on_the_other(tmp_path: Path, servers) -> None:
    (a, url_a), (b, url_b) = servers
    a.failures = [Failure(500, {"error": {"message": "overloaded"}}, RETRY_NOW)] * 6  # every attempt a gets
    summary = _summary(_invoke(tmp_path, f"{url_a},{url_b}", "--concurrency", "2", "--batch-size", "8"))
    assert summary["counts"] == {"accepted": 8}
    assert len(b.calls) == 8  # a's failed requests all landed on b
    rows = _exactly_once(tmp_path)
    assert sorted(r["completion"] for r in rows) == sorted(["billing", "technical", "account", "billing"] * 2)


def test_a_request_failing_everywhere_fails_the_call(servers) -> None:
    (a, url_a), (b, url_b) = servers
    a.failures = [Failure(400, {"error": {"message": "bad request a"}})]
    b.failures = [Failure(400, {"error": {"message": "bad request b"}})]
    engines = [RemoteEngine(u.partition("#")[0], "teacher", max_retries=0) for u in (url_a, url_b)]
    fan = FanoutEngine(engines, ["a", "b"], per_endpoint=1, cooldown=0)
    req = GenerationRequest.chat(TICKETS[0]["prompt"], GenerationParams(max_tokens=4))
    with pytest.raises(EngineError, match="every teacher endpoint"):
        fan.generate([req])
    assert len(fan.generate([req, req])) == 2  # the servers answer again
    fan.close()


def test_several_teachers_must_all_be_urls(tmp_path: Path, servers) -> None:
    (_, url_a), _ = servers
    result = _invoke(tmp_path, f"{url_a},smollm2-135m-instruct")
    assert result.exit_code != 0 and "must all be OpenAI-compatible URLs" in str(result.exception or result.output)
