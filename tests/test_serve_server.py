"""A real uvicorn server on 127.0.0.1 (port 0) in a thread: the official openai client,
continuous batching through HTTP, 429 under overload, cancellation on disconnect."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

from slmops.serve import ServeConfig, create_app
from slmops.serve.runner import BackgroundServer

HELLO = [{"role": "user", "content": "Hello"}]


@contextlib.contextmanager
def serving(store, step_delay: float = 0.0, **kw):
    """A server with `tiny` preloaded; ``step_delay`` slows every forward pass so requests overlap."""
    app = create_app(store, ServeConfig(models=("tiny",), threads=1, **kw))
    with BackgroundServer(app) as srv:
        loaded = app.state.pool.loaded()[0]
        hook = loaded.engine.model.register_forward_hook(lambda *_: time.sleep(step_delay)) if step_delay else None
        srv.worker = loaded.worker
        srv.app = app
        try:
            yield srv
        finally:
            if hook is not None:
                hook.remove()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_official_openai_client_sync_and_async(serve_store):
    openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[dev]')")
    import asyncio

    with serving(serve_store) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        kw = {"model": "tiny", "messages": HELLO, "max_tokens": 12, "temperature": 0.8, "seed": 11}
        whole = client.chat.completions.create(**kw)
        assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        )
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert [m.id for m in client.models.list()][:1] == ["tiny"]
        text = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0)
        assert text.choices[0].text is not None

        async def run_async() -> tuple[str, str]:
            aclient = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
            plain = await aclient.chat.completions.create(**kw)
            pieces = [
                c.choices[0].delta.content or "" async for c in await aclient.chat.completions.create(**kw, stream=True)
            ]
            await aclient.close()
            return plain.choices[0].message.content, "".join(pieces)

        plain, streamed = asyncio.run(run_async())
        assert plain == streamed == whole.choices[0].message.content
        with pytest.raises(openai.NotFoundError, match="Unknown model"):
            client.chat.completions.create(model="missing", messages=HELLO)


def test_a_short_request_joins_a_running_batch_and_leaves_first(serve_store):
    with serving(serve_store, step_delay=0.005, max_batch_size=4) as srv, httpx.Client(base_url=srv.url) as http:
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 400, "temperature": 0, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as long_stream:
            lines = long_stream.iter_lines()
            next(lines)  # the long request is generating
            short = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
            assert short.status_code == 200
            assert srv.worker.running == 1  # the long one is still going: the short one joined and left
            assert srv.worker.stats.max_running == 2
            more = [next(lines) for _ in range(6)]  # and it keeps streaming after the short one left
        assert all(ln.startswith("data: {") or not ln for ln in more)
        assert wait_for(lambda: srv.worker.running == 0)  # closing the stream cancelled the rest


def test_overload_is_a_429_with_retry_after_before_the_stream_opens(serve_store):
    with (
        serving(serve_store, step_delay=0.02, max_batch_size=1, max_queue=1) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 200, "temperature": 0}
        results: list[httpx.Response] = []
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as running:
            lines = running.iter_lines()
            next(lines)
            waiter = threading.Thread(
                target=lambda: results.append(http.post("/v1/chat/completions", json={**body, "max_tokens": 3}))
            )
            waiter.start()
            assert wait_for(lambda: srv.worker.queue_depth == 1)
            over = http.post("/v1/chat/completions", json={**body, "stream": True})
            assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
            assert over.headers["content-type"].startswith("application/json")
            assert over.json()["error"]["code"] == "rate_limit_exceeded"
        waiter.join(10)  # closing the running stream cancelled it, so the queued request got its turn
        assert results and results[0].status_code == 200
        metrics = http.get("/metrics").text
        assert 'slmops_requests_total{model="tiny",status="429",version="tiny:2"} 1.0' in metrics


def test_client_disconnect_cancels_generation(serve_store):
    with serving(serve_store, step_delay=0.01) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 400, "temperature": 0}
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
            lines = stream.iter_lines()
            for _ in range(3):
                next(lines)
            assert srv.worker.running == 1
        assert wait_for(lambda: srv.worker.running == 0, timeout=2)  # long before 400 tokens x 10 ms
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
            http.post("/v1/chat/completions", json=body, timeout=0.3)
        assert wait_for(lambda: srv.worker.running == 0, timeout=2)
        metrics = http.get("/metrics").text
        assert 'slmops_requests_total{model="tiny",status="499",version="tiny:2"} 2.0' in metrics
        generated = [ln for ln in metrics.splitlines() if ln.startswith("slmops_generated_tokens_total")]
        assert float(generated[0].split()[-1]) < 400
