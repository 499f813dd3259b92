"""The OpenAI-compatible API over the ASGI app (FastAPI TestClient): responses, streams,
routing and every 4xx path, each checked against the shared OpenAI schemas."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from slmops.serve import ServeConfig, create_app

HELLO = [{"role": "user", "content": "Hello"}]


def cfg(**kw) -> ServeConfig:
    return ServeConfig(threads=1, **kw)  # one thread: tiny ops on a busy 2-core machine


def chat(model: str = "tiny", **kw) -> dict:
    return {"model": model, "messages": HELLO, "max_tokens": 8, "temperature": 0, **kw}


def sse_events(text: str) -> list:
    lines = [ln.removeprefix("data: ") for ln in text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


@pytest.fixture(scope="module")
def client(serve_store):
    with TestClient(create_app(serve_store, cfg(max_tokens_cap=64, max_body_bytes=4096))) as c:
        yield c


def test_chat_completion_matches_the_openai_schema(client, openai_schema):
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    body = r.json()
    openai_schema(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 0
    assert r.headers["x-slmops-model-version"] == "tiny:2"  # the latest version


def test_stream_concatenates_to_the_non_streamed_text_under_a_seed(client, openai_schema):
    params = chat(temperature=0.9, seed=42, max_tokens=12)
    whole = client.post("/v1/chat/completions", json=params).json()
    r = client.post("/v1/chat/completions", json={**params, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    for ev in events:
        openai_schema(ev, "CreateChatCompletionStreamResponse")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["delta"].get("content") or "" for ev in events for c in ev["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c["finish_reason"] for ev in events for c in ev["choices"] if c["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]


def test_n_choices_stop_and_seeds(client):
    body = client.post("/v1/chat/completions", json=chat(n=3, temperature=1.0, seed=1, max_tokens=10)).json()
    texts = [c["message"]["content"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    assert (
        body["usage"]["prompt_tokens"]
        == client.post("/v1/chat/completions", json=chat()).json()["usage"]["prompt_tokens"]
    )  # counted once for n choices
    greedy = client.post("/v1/chat/completions", json=chat(max_tokens=20)).json()["choices"][0]["message"]["content"]
    stop = greedy[2:4]
    cut = client.post("/v1/chat/completions", json=chat(max_tokens=20, stop=[stop])).json()["choices"][0]
    assert cut["message"]["content"] == greedy[: greedy.find(stop)] and cut["finish_reason"] == "stop"


def test_text_completions_plain_and_streamed(client, openai_schema):
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": ["Hello", "The capital"], "seed": 3}).json()
    openai_schema(body, "CreateCompletionResponse")
    assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 32  # default max_tokens is 16 each
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "seed": 3, "stream": True})
    events = sse_events(r.text)
    assert all(ev["object"] == "text_completion" for ev in events)
    assert "".join(c["text"] for ev in events for c in ev["choices"]) == body["choices"][0]["text"]


def test_models_listing_and_routing(client, openai_schema):
    listing = client.get("/v1/models").json()
    openai_schema(listing, "ListModelsResponse")
    ids = {m["id"] for m in listing["data"]}
    assert {"tiny", "tiny:1", "tiny:2", "tiny@prod"} <= ids
    openai_schema(client.get("/v1/models/tiny@prod").json(), "Model")
    for model, version in (("tiny@prod", "tiny:1"), ("tiny:1", "tiny:1"), ("tiny:2", "tiny:2")):
        assert client.post("/v1/chat/completions", json=chat(model)).headers["x-slmops-model-version"] == version
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("payload", "status", "needle", "param"),
    [
        (b"{not json", 400, "not valid JSON", None),
        (b"[1, 2]", 400, "JSON object", None),
        (chat(temperatur=0.5), 400, "temperatur: unrecognized field", "temperatur"),
        (chat(max_tokens=65), 400, "above this server's cap of 64", "max_tokens"),
        (chat(temperature=3), 400, "temperature", "temperature"),
        ({"model": "tiny", "messages": []}, 400, "messages", "messages"),
        (chat(presence_penalty=0.5), 400, "presence_penalty", None),
        (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
        (chat("nope"), 404, "Unknown model 'nope'", "model"),
        (chat("tiny:9"), 404, "No version 9", "model"),
        (chat("../etc/passwd"), 400, "path", "model"),
        (chat("tiny+tiny:1"), 400, "not an adapter", "model"),
        ({**chat(), "messages": [{"role": "user", "content": "Hello world " * 400}]}, 413, "limit", None),
    ],
)
def test_client_errors_are_4xx_in_the_openai_error_shape(client, openai_schema, payload, status, needle, param):
    kw = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    r = client.post("/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    openai_schema(r.json(), "ErrorResponse")
    assert needle in r.json()["error"]["message"]
    if param:
        assert r.json()["error"]["param"] == param


def test_prompt_longer_than_the_context_window(serve_store):
    with TestClient(create_app(serve_store, cfg(max_body_bytes=1 << 20))) as c:
        long = {**chat(), "messages": [{"role": "user", "content": "Hello world " * 400}]}
        r = c.post("/v1/chat/completions", json=long)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "context window of 512" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200  # and the server carries on


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/chat/completions").status_code == 405


def test_api_key_is_required_when_set(serve_store, monkeypatch):
    key = "s3cret-key-123"
    with TestClient(create_app(serve_store, cfg(api_key=key))) as c:
        assert c.get("/health").status_code == 200  # liveness probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": key}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_cors_is_off_unless_configured(serve_store, client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/chat/completions", headers=preflight).headers
    with TestClient(create_app(serve_store, cfg(cors_origins=("https://app.example",)))) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_metrics_exposition_has_per_version_labels(client):
    client.post("/v1/chat/completions", json=chat("tiny@prod"))
    client.post("/v1/chat/completions", json=chat(max_tokens=999))
    text = client.get("/metrics").text
    assert 'slmops_requests_total{model="tiny@prod",status="200",version="tiny:1"}' in text
    assert 'slmops_requests_total{model="tiny",status="400",version="tiny:2"}' in text
    for name in (
        "slmops_request_latency_seconds_bucket",
        "slmops_time_to_first_token_seconds_count",
        "slmops_generated_tokens_total",
        'slmops_queue_depth{model="tiny",version="tiny:1"}',
        'slmops_batch_size{model="tiny",version="tiny:2"}',
        "slmops_loaded_models 2.0",
        "slmops_resident_memory_bytes",
    ):
        assert name in text, name


def test_least_recently_used_model_is_unloaded_beyond_the_budget(serve_store):
    with TestClient(create_app(serve_store, cfg(memory_budget_mb=0.5))) as c:
        assert c.post("/v1/chat/completions", json=chat("tiny:1")).status_code == 200
        assert c.get("/health").json()["loaded"] == ["tiny:1"]
        assert c.post("/v1/chat/completions", json=chat("tiny:2")).status_code == 200
        assert c.get("/health").json()["loaded"] == ["tiny:2"]
        assert c.post("/v1/chat/completions", json=chat("tiny:1")).status_code == 200  # loads again on demand


def test_params_precedence_is_user_then_model_default_then_openai_default():
    from slmops.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelDefaults

    bare = ChatCompletionRequest(model="m", messages=HELLO)
    p = bare.to_params(ModelDefaults(), cap=100)
    assert (p.temperature, p.top_p, p.max_tokens, p.seed) == (1.0, 1.0, 100, None)
    p = bare.to_params(ModelDefaults(temperature=0.3, top_p=0.8, max_tokens=20), cap=100)
    assert (p.temperature, p.top_p, p.max_tokens) == (0.3, 0.8, 20)
    user = ChatCompletionRequest(model="m", messages=HELLO, temperature=0, top_p=0.5, max_completion_tokens=7, seed=4)
    p = user.to_params(ModelDefaults(temperature=0.3, top_p=0.8, max_tokens=20), cap=100, choice=2)
    assert (p.temperature, p.top_p, p.max_tokens, p.seed) == (0, 0.5, 7, 6)
    text = CompletionRequest(model="m", prompt="x")
    assert text.to_params(ModelDefaults(), cap=100).max_tokens == 16  # OpenAI's text-completion default
    assert text.to_params(ModelDefaults(), cap=8).max_tokens == 8


def test_an_empty_prompt_starts_from_bos_and_empty_ids_are_a_400(client):
    # completions are not templated: an empty prompt is the BOS token alone (a base model's unconditional text)
    for stream in (False, True):
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 4, "stream": stream})
        assert r.status_code == 200, r.text
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == 1
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": [[]], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_prompt"
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": [10**6], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
