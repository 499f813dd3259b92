"""The server reports the prefix cache: a second request with the same system prompt reuses the
first one's KV (same answer), and /metrics counts the hit."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from slmops.serve import ServeConfig, create_app

SYSTEM = "You are a support assistant. Answer with one word: billing, technical or account."


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}{{model="tiny",version="tiny:2"}} (\S+)$', text, re.M)
    assert m, name
    return float(m.group(1))


def test_prefix_cache_hits_and_misses_in_metrics(serve_store):
    body = lambda q: {  # noqa: E731
        "model": "tiny", "max_tokens": 6, "temperature": 0,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
    }
    with TestClient(create_app(serve_store, ServeConfig(threads=1))) as c:
        first = c.post("/v1/chat/completions", json=body("Hello")).json()
        second = c.post("/v1/chat/completions", json=body("Hello")).json()
        c.post("/v1/chat/completions", json=body("My card was charged twice"))
        text = c.get("/metrics").text
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert _metric(text, "slmops_prefix_cache_misses") == 1.0
    assert _metric(text, "slmops_prefix_cache_hits") == 2.0
    assert _metric(text, "slmops_prefix_cache_hit_tokens") >= 2 * 16
    assert _metric(text, "slmops_prefix_cache_bytes") > 0
