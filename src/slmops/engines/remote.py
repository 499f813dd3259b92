"""An engine that calls any OpenAI-compatible HTTP endpoint.

Works with vLLM, Ollama, the llama.cpp server, cloud APIs and our own ``slmops serve``:
chat requests go to ``POST {base_url}/chat/completions``, raw prompts to
``POST {base_url}/completions``. The server applies the model's chat template.

Example::

    with RemoteEngine("http://127.0.0.1:8000/v1", model="smollm2-135m") as engine:
        [result] = engine.generate([GenerationRequest.chat("Hello!")])
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from slmops.engines.base import (
    Engine,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from slmops.errors import EngineError

MAX_RETRY_DELAY_S = 30.0
"""Upper bound on one wait between retries, whatever the backoff or ``Retry-After`` says."""

_ERROR_TEXT_LIMIT = 300


class _RetryableError(Exception):
    """One failed attempt that is worth repeating (connection trouble, 429, 5xx)."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class _RateLimiter:
    """Spaces request starts at least ``1 / requests_per_second`` apart, across all threads."""

    def __init__(self, requests_per_second: float) -> None:
        self._interval = 1.0 / requests_per_second
        self._next_slot = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


class RemoteEngine(Engine):
    """Generation through an OpenAI-compatible server.

    Args:
        base_url: the API root up to and including the version segment, e.g.
            ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``; used as given
            (a trailing ``/`` is dropped, nothing is appended).
        model: the ``model`` field sent with every request.
        api_key: sent as ``Authorization: Bearer <key>``; ``None`` falls back to
            ``$OPENAI_API_KEY``; no header when neither is set.
        timeout: seconds allowed for connecting and for each read.
        max_retries: extra attempts after the first on connection errors, timeouts,
            HTTP 429 and 5xx (so at most ``max_retries + 1`` attempts). Other 4xx are not retried.
        backoff: wait ``backoff * 2**n`` seconds before retry ``n`` (0-based), unless the server
            sends ``Retry-After`` (seconds), which wins; both capped at ``MAX_RETRY_DELAY_S``.
        max_concurrency: requests of one ``generate`` call in flight at once.
        requests_per_second: optional client-side limit on request starts (every attempt
            counts), shared by all threads of this engine.
    """

    name = "remote"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 8,
        requests_per_second: float | None = None,
    ) -> None:
        _validate_settings(base_url, model, timeout, max_retries, backoff, max_concurrency, requests_per_second)
        self.base_url = base_url.strip().rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self._limiter = _RateLimiter(requests_per_second) if requests_per_second else None
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_concurrency),
        )
        self._closed = False

    # -- Engine interface -------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Send every request (up to ``max_concurrency`` at once); results are in request order.

        The first request that fails raises :class:`EngineError`; requests not yet started are cancelled.
        """
        self._check_open()
        if len(requests) <= 1:
            return [self._generate_one(r) for r in requests]
        workers = min(self.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slmops-remote") as pool:
            futures = [pool.submit(self._generate_one, r) for r in requests]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Yield text deltas as the server sends them, then one empty chunk with the finish reason
        and token counts (zero when the server sends no usage).

        Retries happen only until the server accepts the request; a stream that breaks off
        midway raises :class:`EngineError`, since its text has already been handed out.
        """
        self._check_open()
        path, body = self._payload(request, stream=True)
        url = self.base_url + path
        response = self._post(url, body, stream=True)
        chat = request.messages is not None
        finish: FinishReason = "stop"
        usage: dict[str, Any] = {}
        try:
            for data in _sse_data(response.iter_bytes()):
                if data == "[DONE]":
                    break
                event = _load_json(data.encode("utf-8"), url)
                _raise_stream_error(event, url)
                usage = event.get("usage") or usage
                choices = event.get("choices") or []
                if not choices:
                    continue
                text = _delta_text(choices[0], chat)
                if text:
                    yield StreamChunk(text)
                if choices[0].get("finish_reason"):
                    finish = _finish_reason(choices[0]["finish_reason"])
        except httpx.TransportError as exc:
            raise EngineError(
                f"The stream from {url} broke off: {_describe(exc)}.",
                hint=f"Check that the server at {self.base_url} is still running.",
            ) from exc
        finally:
            response.close()
        prompt_tokens, completion_tokens = _token_counts(usage)
        yield StreamChunk("", finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def count_tokens(self, request: GenerationRequest) -> int:
        """An *estimate* of the prompt tokens: ``max(1, characters // 4)`` of the prompt or of all
        message contents. The OpenAI API exposes no tokenizer; the exact count of a finished
        request is ``GenerationResult.prompt_tokens``."""
        messages = request.messages or ()
        text = request.prompt if request.prompt is not None else "".join(m.content for m in messages)
        return max(1, len(text) // 4)

    def close(self) -> None:
        self._closed = True
        self._client.close()

    # -- one request ------------------------------------------------------------------

    def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        path, body = self._payload(request, stream=False)
        url = self.base_url + path
        response = self._post(url, body, stream=False)
        data = _load_json(response.content, url)
        return _parse_result(data, chat=request.messages is not None, url=url, seconds=_elapsed(response))

    def _payload(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model}
        if request.messages is not None:
            path = "/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        body.update(_sampling_fields(request.params))
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return path, body

    def _post(self, url: str, body: dict[str, Any], stream: bool) -> httpx.Response:
        """POST with retries; returns a successful response (unread when ``stream``)."""
        attempts = self.max_retries + 1
        last: _RetryableError | None = None
        for attempt in range(attempts):
            if last is not None:
                time.sleep(self._retry_delay(attempt - 1, last.retry_after))
            try:
                return self._send_once(url, body, stream)
            except _RetryableError as exc:
                last = exc
        assert last is not None
        raise EngineError(
            f"POST {url} failed after {attempts} attempt{'s' if attempts > 1 else ''}; last error: {last.cause}.",
            hint=f"Check that an OpenAI-compatible server is running at {self.base_url} and reachable.",
        )

    def _send_once(self, url: str, body: dict[str, Any], stream: bool) -> httpx.Response:
        self._check_open()
        if self._limiter is not None:
            self._limiter.wait()
        request = self._client.build_request("POST", url, json=body)
        try:
            response = self._client.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise _RetryableError(_describe(exc)) from exc
        if not response.is_error:
            return response
        try:
            response.read()
        except httpx.TransportError as exc:
            raise _RetryableError(_describe(exc)) from exc
        finally:
            response.close()
        status = response.status_code
        message = _server_message(response)
        if status == 429 or status >= 500:
            raise _RetryableError(f"HTTP {status}: {message}", _retry_after(response))
        raise EngineError(f"POST {url} failed with HTTP {status}: {message}", hint=self._hint_for_status(status))

    def _retry_delay(self, retry: int, retry_after: float | None) -> float:
        delay = retry_after if retry_after is not None else self.backoff * 2**retry
        return min(delay, MAX_RETRY_DELAY_S)

    def _hint_for_status(self, status: int) -> str:
        if status in (401, 403):
            return "Check the API key (api_key= or $OPENAI_API_KEY)."
        if status == 404:
            return f"Check the model name {self.model!r} and that base_url is the API root, usually ending in '/v1'."
        return f"Check the model name {self.model!r} and the generation parameters."

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("This RemoteEngine is closed.", hint="Create a new engine to send more requests.")


# -- helpers --------------------------------------------------------------------------


def _validate_settings(
    base_url: str,
    model: str,
    timeout: float,
    max_retries: int,
    backoff: float,
    max_concurrency: int,
    requests_per_second: float | None,
) -> None:
    problems = []
    if not base_url.strip().startswith(("http://", "https://")):
        problems.append(f"base_url must start with http:// or https:// (got {base_url!r})")
    if not model:
        problems.append("model must be a non-empty name")
    if timeout <= 0:
        problems.append(f"timeout must be > 0 seconds (got {timeout})")
    if max_retries < 0:
        problems.append(f"max_retries must be >= 0 (got {max_retries})")
    if backoff < 0:
        problems.append(f"backoff must be >= 0 seconds (got {backoff})")
    if max_concurrency < 1:
        problems.append(f"max_concurrency must be >= 1 (got {max_concurrency})")
    if requests_per_second is not None and requests_per_second <= 0:
        problems.append(f"requests_per_second must be > 0 (got {requests_per_second})")
    if problems:
        raise EngineError("Invalid remote engine settings: " + "; ".join(problems) + ".")


def _sampling_fields(params: GenerationParams) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        fields["stop"] = list(params.stop)
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.response_format is not None:  # structured output: the server enforces it
        fields["response_format"] = json.loads(params.response_format)
    return fields


def _parse_result(data: Any, chat: bool, url: str, seconds: float) -> GenerationResult:
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") if chat else choice.get("text")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise EngineError(
            f"The response from {url} has no {'choices[0].message' if chat else 'choices[0].text'}.",
            hint="Check that the server speaks the OpenAI API.",
        ) from exc
    prompt_tokens, completion_tokens = _token_counts(data.get("usage") or {})
    return GenerationResult(
        text=text if isinstance(text, str) else "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=_finish_reason(choice.get("finish_reason")),
        seconds=seconds,
    )


def _delta_text(choice: dict[str, Any], chat: bool) -> str:
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return text if isinstance(text, str) else ""


def _finish_reason(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


def _token_counts(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _sse_data(chunks: Iterable[bytes]) -> Iterator[str]:
    """Yield the ``data`` of each Server-Sent Event.

    Lines are split as bytes and decoded whole, so a UTF-8 character split across network
    reads is never broken. Comments (``:``) and other fields (``event:``, ``id:``) are skipped.
    """
    buffer = b""
    data_lines: list[str] = []
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if line:
                if line.startswith("data:"):
                    data_lines.append(line[5:].removeprefix(" "))
            elif data_lines:
                yield "\n".join(data_lines)
                data_lines = []
    tail = buffer.rstrip(b"\r").decode("utf-8", errors="replace")
    if tail.startswith("data:"):
        data_lines.append(tail[5:].removeprefix(" "))
    if data_lines:
        yield "\n".join(data_lines)


def _load_json(content: bytes, url: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        snippet = content[:_ERROR_TEXT_LIMIT].decode("utf-8", errors="replace")
        raise EngineError(
            f"The response from {url} is not valid JSON: {snippet!r}.",
            hint="Check that base_url points at an OpenAI-compatible API root (usually ending in '/v1').",
        ) from exc


def _raise_stream_error(event: Any, url: str) -> None:
    if not isinstance(event, dict):
        raise EngineError(f"The stream from {url} sent a non-object event: {event!r}.")
    if "error" in event:
        raise EngineError(f"The stream from {url} reported an error: {_error_message(event)}.")


def _error_message(data: Any) -> str | None:
    """The message of an OpenAI error body ``{"error": {"message": ...}}`` or a common variant."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    for value in (error, data.get("detail"), data.get("message")):
        if isinstance(value, str):
            return value
    return None


def _server_message(response: httpx.Response) -> str:
    try:
        message = _error_message(json.loads(response.content))
    except ValueError:
        message = None
    if message:
        return message
    text = response.text.strip()[:_ERROR_TEXT_LIMIT]
    return text or response.reason_phrase or "no error message"


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds; ``None`` when absent or in the HTTP-date form."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _elapsed(response: httpx.Response) -> float:
    try:
        return response.elapsed.total_seconds()
    except RuntimeError:  # elapsed is unset until the response is closed
        return 0.0


def _describe(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
