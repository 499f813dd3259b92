"""An engine that calls any OpenAI-compatible HTTP endpoint, through the official ``openai`` client.

Works with vLLM, Ollama, the llama.cpp server, cloud APIs and our own ``slmops serve``:
chat requests go to ``POST {base_url}/chat/completions``, raw prompts to
``POST {base_url}/completions``. The server applies the model's chat template.

Retries are the ``openai`` client's: connection errors, timeouts, HTTP 408/409/429 and 5xx are
retried with exponential backoff and jitter (0.5 s doubling up to 8 s, each wait cut by up to a
quarter at random, so clients that failed together do not retry together), and a server's
``Retry-After`` (seconds, ``retry-after-ms`` or an HTTP date) of up to a minute wins. On top,
this engine adds bounded concurrency for a batch and an optional client-side rate limit that
every attempt, retries included, passes through.

Example::

    with RemoteEngine("http://127.0.0.1:8000/v1", model="smollm2-135m") as engine:
        [result] = engine.generate([GenerationRequest.chat("Hello!")])
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from slmops.engines.base import (
    Engine,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from slmops.errors import EngineError

_ERROR_TEXT_LIMIT = 300
_RETRIED_STATUS = (408, 409, 429)  # and every 5xx: what the openai client retries


class _RateLimiter:
    """Spaces request starts at least ``1 / requests_per_second`` apart, across all threads."""

    def __init__(self, requests_per_second: float) -> None:
        self._interval = 1.0 / requests_per_second
        self._next_slot = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, *_: Any) -> None:
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
        max_retries: extra attempts after the first (so at most ``max_retries + 1``), made by the
            ``openai`` client as the module docstring says. Other 4xx are not retried.
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
        max_concurrency: int = 8,
        requests_per_second: float | None = None,
    ) -> None:
        _validate_settings(base_url, model, timeout, max_retries, max_concurrency, requests_per_second)
        self.base_url = base_url.strip().rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self._limiter = _RateLimiter(requests_per_second) if requests_per_second else None
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        hooks = {"request": [self._limiter.wait]} if self._limiter else {}
        # no key anywhere: every request omits the Authorization header (local servers need none)
        self._headers = {} if key else {"extra_headers": {"Authorization": openai.Omit()}}
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or "unused",
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks, timeout=timeout),
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
        url, events = self._call(request, stream=True)
        chat = request.messages is not None
        finish: FinishReason = "stop"
        usage: dict[str, Any] = {}
        try:
            for chunk in events:
                event = _as_dict(chunk, url)
                usage = event.get("usage") or usage
                choices = event.get("choices") or []
                if not choices:
                    continue
                text = _delta_text(choices[0], chat)
                if text:
                    yield StreamChunk(text)
                if choices[0].get("finish_reason"):
                    finish = _finish_reason(choices[0]["finish_reason"])
        except openai.APIError as exc:
            raise EngineError(f"The stream from {url} reported an error: {_api_message(exc)}.") from exc
        except EngineError:
            raise
        except Exception as exc:  # the transport broke off midway (the client's own exception types)
            raise EngineError(
                f"The stream from {url} broke off: {_describe(exc)}.",
                hint=f"Check that the server at {self.base_url} is still running.",
            ) from exc
        finally:
            events.close()
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
        started = time.monotonic()
        url, response = self._call(request, stream=False)
        data = _as_dict(response, url)
        return _parse_result(data, chat=request.messages is not None, url=url, seconds=time.monotonic() - started)

    def _call(self, request: GenerationRequest, stream: bool) -> tuple[str, Any]:
        """One create call (with the client's retries): the URL and the completion or its event stream."""
        self._check_open()
        fields: dict[str, Any] = {"model": self.model, **_sampling_fields(request.params), **self._headers}
        if stream:
            fields.update(stream=True, stream_options={"include_usage": True})
        if request.messages is not None:
            url = self.base_url + "/chat/completions"
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            create: Any = lambda: self._client.chat.completions.create(messages=messages, **fields)  # noqa: E731
        else:
            url = self.base_url + "/completions"
            create = lambda: self._client.completions.create(prompt=request.prompt, **fields)  # noqa: E731
        attempts = self.max_retries + 1
        tried = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
        unreachable = f"Check that an OpenAI-compatible server is running at {self.base_url} and reachable."
        try:
            return url, create()
        except openai.APIStatusError as exc:
            status, message = exc.status_code, _api_message(exc)
            if status in _RETRIED_STATUS or status >= 500:
                raise EngineError(f"POST {url} failed {tried}; last error: HTTP {status}: {message}.",
                                  hint=unreachable) from exc  # fmt: skip
            raise EngineError(f"POST {url} failed with HTTP {status}: {message}",
                              hint=self._hint_for_status(status)) from exc  # fmt: skip
        except openai.APIConnectionError as exc:  # timeouts too
            self._check_open()
            raise EngineError(f"POST {url} failed {tried}; last error: {_describe(exc.__cause__ or exc)}.",
                              hint=unreachable) from exc  # fmt: skip
        except openai.APIResponseValidationError as exc:
            raise EngineError(f"The response from {url} is not an OpenAI response: {exc}.",
                              hint="Check that base_url points at an OpenAI-compatible API root "
                                   "(usually ending in '/v1').") from exc  # fmt: skip

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


def _describe(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _as_dict(obj: Any, url: str) -> dict[str, Any]:
    """A response or stream event as plain JSON data (the client's models keep unknown fields)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_unset=True)
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, str | bytes):  # JSON sent under another content type reaches us as text
        try:
            data = json.loads(obj)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    snippet = str(obj)[:_ERROR_TEXT_LIMIT]
    raise EngineError(
        f"The response from {url} is not valid JSON: {snippet!r}.",
        hint="Check that base_url points at an OpenAI-compatible API root (usually ending in '/v1').",
    )


def _api_message(exc: openai.APIError) -> str:
    """The server's own words: the message of its error body, else its text."""
    body = exc.body
    message = _error_message({"error": body} if isinstance(body, dict) and "message" in body else body)
    if message:
        return message
    response = getattr(exc, "response", None)
    text = (response.text.strip()[:_ERROR_TEXT_LIMIT] if response is not None else "") or str(body or "")
    return text or exc.message or "no error message"
