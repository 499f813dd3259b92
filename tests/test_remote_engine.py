"""RemoteEngine against a real HTTP server that mimics the OpenAI endpoints."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.engines.remote import RemoteEngine
from slmops.errors import EngineError

RETRY_NOW = {"retry-after-ms": "10"}  # the server asks for a 10 ms wait: no backoff in the test

# -- fake OpenAI server -----------------------------------------------------------------


@dataclass
class Failure:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    started: float


@dataclass
class FakeOpenAI:
    """What the server does and what it saw. Replies echo the prompt's words, one "token" per word."""

    failures: list[Failure] = field(default_factory=list)
    delay: Callable[[dict[str, Any]], float] = lambda body: 0.0
    reply: Callable[[dict[str, Any]], str] = lambda body: "echo: " + _prompt_text(body)
    send_usage: bool = True
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_call(self, call: Call) -> Failure | None:
        with self.lock:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.failures.pop(0) if self.failures else None

    def end_call(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"]


class Handler(BaseHTTPRequestHandler):
    server: Any  # has .fake

    def log_message(self, *args: Any) -> None:
        pass  # keep test output quiet

    def _handle_post(self) -> None:
        fake: FakeOpenAI = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        headers = {k.lower(): v for k, v in self.headers.items()}
        failure = fake.start_call(Call(self.path, headers, body, time.monotonic()))
        self._ended = False
        try:
            time.sleep(fake.delay(body))
            if failure is not None:
                self._send_json(failure.status, failure.body or {}, failure.headers)
            elif self.path not in ("/v1/chat/completions", "/v1/completions"):
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            elif body.get("stream"):
                self._send_stream(fake, body)
            else:
                self._send_completion(fake, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            self._end_call()

    do_POST = _handle_post

    def _end_call(self) -> None:
        """Count the call as finished before its last bytes go out: once the client has the whole
        response it may start the next request, which must not overlap this one in the count."""
        if not self._ended:
            self._ended = True
            self.server.fake.end_call()

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self._end_call()
        self.wfile.write(data)

    def _send_completion(self, fake: FakeOpenAI, body: dict[str, Any]) -> None:
        words, finish = _generate_words(fake, body)
        text = " ".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if "messages" in body:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        payload: dict[str, Any] = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]}
        if fake.send_usage:
            payload["usage"] = _usage(body, words)
        self._send_json(200, payload)

    def _send_stream(self, fake: FakeOpenAI, body: dict[str, Any]) -> None:
        words, finish = _generate_words(fake, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        chat = "messages" in body
        if chat:
            self._send_event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        self.wfile.write(b": keep-alive comment\n\n")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            self._send_event({"choices": [{**choice, "finish_reason": None}]})
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        self._send_event({"choices": [{**last, "finish_reason": finish}]})
        if fake.send_usage and body.get("stream_options", {}).get("include_usage"):
            self._send_event({"choices": [], "usage": _usage(body, words)})
        self._end_call()
        self.wfile.write(b"data: [DONE]\n\n")

    def _send_event(self, payload: dict[str, Any]) -> None:
        """Write one event in two network writes split mid-way, often inside a UTF-8 character."""
        data = b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
        middle = len(data) // 2
        self.wfile.write(data[:middle])
        self.wfile.flush()
        time.sleep(0.002)
        self.wfile.write(data[middle:])


def _generate_words(fake: FakeOpenAI, body: dict[str, Any]) -> tuple[list[str], str]:
    words = fake.reply(body).split(" ")
    if len(words) > body["max_tokens"]:
        return words[: body["max_tokens"]], "length"
    return words, "stop"


def _usage(body: dict[str, Any], words: list[str]) -> dict[str, int]:
    prompt_tokens = len(_prompt_text(body).split())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeOpenAI()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake(server: ThreadingHTTPServer) -> FakeOpenAI:
    server.fake = FakeOpenAI()  # type: ignore[attr-defined]
    return server.fake  # type: ignore[attr-defined]


@pytest.fixture
def base_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def make_engine(base_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RemoteEngine]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engines: list[RemoteEngine] = []

    def make(**kwargs: Any) -> RemoteEngine:
        settings: dict[str, Any] = {"base_url": base_url, "model": "tiny", "timeout": 5.0}
        engine = RemoteEngine(**{**settings, **kwargs})
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


# -- request body and headers ---------------------------------------------------------------


def test_chat_request_sends_sampling_fields_and_auth(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    engine = make_engine(api_key="sk-test")
    params = GenerationParams(max_tokens=7, temperature=0.3, top_p=0.9, stop=("\n", "END"), seed=42)
    request = GenerationRequest(messages=(Message("system", "Be brief."), Message("user", "hi there")), params=params)

    [result] = engine.generate([request])

    [call] = fake.calls
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == "Bearer sk-test"
    assert call.body == {
        "model": "tiny",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 42,
    }
    assert result.text == "echo: hi there"
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (2, 3, "stop")
    assert result.seconds > 0


def test_prompt_request_goes_to_completions_and_omits_empty_stop_and_seed(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    engine = make_engine()
    [result] = engine.generate([GenerationRequest(prompt="one two three")])

    [call] = fake.calls
    assert call.path == "/v1/completions"
    assert "authorization" not in call.headers
    assert call.body == {
        "model": "tiny",
        "prompt": "one two three",
        "max_tokens": 256,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    assert result.text == "echo: one two three"


def test_api_key_falls_back_to_environment(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    make_engine().generate([GenerationRequest.chat("hi")])
    assert fake.calls[0].headers["authorization"] == "Bearer sk-from-env"


def test_length_finish_reason_and_missing_usage(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.send_usage = False
    [result] = make_engine().generate([GenerationRequest.chat("a b c d e", GenerationParams(max_tokens=2))])
    assert result.text == "echo: a"
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)


def test_trailing_slash_in_base_url_is_dropped(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine], base_url: str
) -> None:
    make_engine(base_url=base_url + "/").generate([GenerationRequest(prompt="x")])
    assert fake.calls[0].path == "/v1/completions"


# -- concurrency and rate limit ---------------------------------------------------------------


def test_results_in_request_order_under_bounded_concurrency(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    # Later requests answer sooner, so completion order is the reverse of request order.
    fake.delay = lambda body: 0.01 * (10 - int(_prompt_text(body).split()[1]))
    engine = make_engine(max_concurrency=3)
    requests = [GenerationRequest.chat(f"item {i}") for i in range(9)]

    started = time.monotonic()
    results = engine.generate(requests)
    elapsed = time.monotonic() - started

    assert [r.text for r in results] == [f"echo: item {i}" for i in range(9)]
    assert 2 <= fake.max_in_flight <= 3
    assert elapsed < sum(0.01 * (10 - i) for i in range(9))  # faster than one at a time


def test_rate_limit_spaces_request_starts(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    engine = make_engine(requests_per_second=20, max_concurrency=5)
    started = time.monotonic()
    engine.generate([GenerationRequest(prompt=f"p{i}") for i in range(5)])
    elapsed = time.monotonic() - started

    assert elapsed >= 0.15
    arrivals = sorted(call.started for call in fake.calls)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.025  # 0.05 s apart when sent; arrival adds scheduling jitter on a loaded machine


def test_every_retry_passes_through_the_rate_limit(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(503, headers=RETRY_NOW)] * 2
    make_engine(requests_per_second=10).generate([GenerationRequest.chat("hi")])
    gaps = [b.started - a.started for a, b in itertools.pairwise(fake.calls)]
    assert len(fake.calls) == 3 and min(gaps) >= 0.075  # 0.1 s apart when sent


# -- retries and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_retryable_status_is_retried_until_success(
    status: int, fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    fake.failures = [Failure(status, {"error": {"message": "busy"}}, RETRY_NOW)] * 2
    started = time.monotonic()
    [result] = make_engine(max_retries=3).generate([GenerationRequest.chat("hi")])
    assert time.monotonic() - started < 0.3  # the server's retry-after-ms wins over the backoff
    assert result.text == "echo: hi"
    assert len(fake.calls) == 3


def test_backoff_grows_exponentially_with_jitter_without_retry_after(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    """The openai client's backoff: 0.5 s, then 1 s, each cut by up to 25% at random."""
    fake.failures = [Failure(500), Failure(502)]
    make_engine(max_retries=2).generate([GenerationRequest.chat("hi")])
    assert len(fake.calls) == 3
    first, second = (b.started - a.started for a, b in itertools.pairwise(fake.calls))
    assert 0.375 - 0.01 <= first <= 0.5 + 0.2 and 0.75 - 0.01 <= second <= 1.0 + 0.2


def test_retry_after_header_is_honoured(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(429, headers={"Retry-After": "0.2"})]
    started = time.monotonic()
    make_engine().generate([GenerationRequest.chat("hi")])
    assert time.monotonic() - started >= 0.18


def test_an_http_date_retry_after_is_honoured(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    from email.utils import formatdate

    fake.failures = [Failure(503, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)})]
    started = time.monotonic()
    [result] = make_engine().generate([GenerationRequest.chat("hi")])
    assert result.text == "echo: hi" and len(fake.calls) == 2
    assert time.monotonic() - started >= 0.95  # whole seconds: between 1 and 2 s from now


def test_client_error_is_not_retried_and_names_the_server_message(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine], base_url: str
) -> None:
    fake.failures = [Failure(400, {"error": {"message": "The model `tiny` does not exist.", "type": "invalid"}})]
    with pytest.raises(EngineError) as info:
        make_engine(max_retries=3).generate([GenerationRequest.chat("hi")])

    message = str(info.value)
    assert f"{base_url}/chat/completions" in message
    assert "HTTP 400" in message
    assert "The model `tiny` does not exist." in message
    assert "model name" in (info.value.hint or "")
    assert len(fake.calls) == 1


def test_unauthorized_hints_at_the_api_key(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(401, {"detail": "bad key"})]
    with pytest.raises(EngineError, match="bad key") as info:
        make_engine().generate([GenerationRequest.chat("hi")])
    assert "API key" in (info.value.hint or "")


def test_exhausted_retries_report_attempts_and_last_cause(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    fake.failures = [Failure(503, {"error": {"message": "overloaded"}})] * 10
    with pytest.raises(EngineError) as info:
        make_engine(max_retries=2).generate([GenerationRequest.chat("hi")])

    assert "3 attempts" in str(info.value)
    assert "HTTP 503: overloaded" in str(info.value)
    assert "server is running" in (info.value.hint or "")
    assert len(fake.calls) == 3


def test_timeout_is_retried_then_reported(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.delay = lambda body: 0.5
    with pytest.raises(EngineError, match=r"2 attempts.*Timeout"):
        make_engine(timeout=0.1, max_retries=1).generate([GenerationRequest.chat("hi")])
    assert len(fake.calls) == 2


def test_connection_refused_is_reported_with_the_url() -> None:
    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    engine = RemoteEngine(url, "tiny", max_retries=1)
    with engine, pytest.raises(EngineError, match=r"2 attempts.*ConnectError") as info:
        engine.generate([GenerationRequest(prompt="x")])
    assert url in (info.value.hint or "")


def test_one_failure_fails_the_batch(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(400, {"error": {"message": "bad request"}})]
    with pytest.raises(EngineError, match="bad request"):
        make_engine(max_concurrency=2).generate([GenerationRequest.chat(f"q{i}") for i in range(4)])


@pytest.mark.parametrize(
    "settings",
    [{"base_url": "127.0.0.1:8000/v1"}, {"max_concurrency": 0}, {"requests_per_second": 0}, {"timeout": 0}],
)
def test_bad_settings_are_rejected(settings: dict[str, Any]) -> None:
    with pytest.raises(EngineError, match="Invalid remote engine settings"):
        RemoteEngine(**{"base_url": "http://127.0.0.1:1/v1", "model": "tiny", **settings})


def test_closed_engine_refuses_requests(make_engine: Callable[..., RemoteEngine]) -> None:
    engine = make_engine()
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.generate([GenerationRequest(prompt="x")])


# -- streaming --------------------------------------------------------------------------------


def test_chat_stream_joins_to_full_text_and_ends_with_usage(
    fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]
) -> None:
    chunks = list(make_engine().stream(GenerationRequest.chat("one two three")))

    *pieces, last = chunks
    assert len(pieces) == 4
    assert "".join(c.text for c in pieces) == "echo: one two three"
    assert all(c.finish_reason is None for c in pieces)
    assert (last.text, last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("", "stop", 3, 4)
    body = fake.calls[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_completion_stream_reports_length(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    request = GenerationRequest(prompt="a b c d", params=GenerationParams(max_tokens=3))
    chunks = list(make_engine().stream(request))
    assert fake.calls[0].path == "/v1/completions"
    assert "".join(c.text for c in chunks) == "echo: a b"
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 3


def test_stream_without_usage_ends_with_zero_counts(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.send_usage = False
    last = list(make_engine().stream(GenerationRequest.chat("hi")))[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 0, 0)


def test_multibyte_utf8_survives_streaming(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    text = "héllo 世界 🙂 naïve ünïcödé 日本語テキスト 🙂🙂"
    fake.reply = lambda body: text
    chunks = list(make_engine().stream(GenerationRequest.chat("hi")))
    assert "".join(c.text for c in chunks) == text
    assert all("\ufffd" not in c.text for c in chunks)


def test_stream_retries_before_the_first_byte(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(503, headers=RETRY_NOW)]
    chunks = list(make_engine(max_retries=1).stream(GenerationRequest.chat("hi")))
    assert "".join(c.text for c in chunks) == "echo: hi"
    assert len(fake.calls) == 2


def test_stream_client_error_raises(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    fake.failures = [Failure(400, {"error": {"message": "max_tokens is too large"}})]
    with pytest.raises(EngineError, match="HTTP 400: max_tokens is too large"):
        list(make_engine().stream(GenerationRequest.chat("hi")))
    assert len(fake.calls) == 1


# -- token estimate ---------------------------------------------------------------------------


def test_count_tokens_is_a_character_estimate(make_engine: Callable[..., RemoteEngine]) -> None:
    engine = make_engine()
    assert engine.count_tokens(GenerationRequest(prompt="x" * 40)) == 10
    assert engine.count_tokens(GenerationRequest.chat("y" * 20, system="z" * 20)) == 10
    assert engine.count_tokens(GenerationRequest(prompt="")) == 1


def test_abandoned_stream_releases_the_connection(fake: FakeOpenAI, make_engine: Callable[..., RemoteEngine]) -> None:
    engine = make_engine()
    stream = engine.stream(GenerationRequest.chat("one two three"))
    assert next(stream).text == "echo:"
    stream.close()
    assert [r.text for r in engine.generate([GenerationRequest.chat("again")])] == ["echo: again"]
