"""Canary routes: weighted split, stickiness per user, pinning, run-time weights, per-version metrics."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from slmops.errors import SlmopsError
from slmops.serve import ServeConfig, create_app
from slmops.serve.canary import PIN_HEADER, Router, parse_route

KEY = "admin-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def ask(c, user: str | None = None, headers: dict | None = None) -> str:
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = c.post(
        "/v1/chat/completions", json={**body, **({"user": user} if user else {})}, headers={**AUTH, **(headers or {})}
    )
    assert r.status_code == 200, r.text
    return r.headers["x-slmops-model-version"]


def test_parse_route_and_its_errors():
    assert parse_route("support=support@prod:90, support@candidate:10") == (
        "support",
        {"support@prod": 90.0, "support@candidate": 10.0},
    )
    for bad in ("support", "=a:1", "s=a", "s=a:x", "s=a:-1", "s=a:0", "s=../x:1"):
        with pytest.raises(SlmopsError):
            parse_route(bad)


def test_split_is_within_tolerance_of_the_weights():
    random.seed(0)
    router = Router({"s": {"a": 90, "b": 10}})
    counts = Counter(router.pick("s") for _ in range(5000))
    assert abs(counts["b"] / 5000 - 0.10) < 0.02
    users = Counter(router.pick("s", user=f"user-{i}") for i in range(5000))
    assert abs(users["b"] / 5000 - 0.10) < 0.02
    assert {router.pick("s", user="alice") for _ in range(20)} == {router.pick("s", user="alice")}
    assert router.pick("s", pin="b") == "b" and router.pick("s", pin="not-a-target") in ("a", "b")


@pytest.fixture()
def client(serve_store):
    routes = {"support": {"tiny@prod": 70, "tiny:2": 30}}
    with TestClient(create_app(serve_store, ServeConfig(threads=1, api_key=KEY, routes=routes))) as c:
        yield c


def test_canary_over_http_is_sticky_pinnable_and_reweighted_at_run_time(client):
    served = {f"u{i}": ask(client, user=f"u{i}") for i in range(20)}
    share = sum(v == "tiny:2" for v in served.values()) / len(served)
    assert 0.1 < share < 0.5  # about 30%
    assert all(ask(client, user=u) == v for u, v in list(served.items())[:5])  # sticky per user
    assert ask(client, headers={PIN_HEADER: "tiny:2"}) == "tiny:2"
    assert "support" in {m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]}

    assert client.put("/admin/routes/support", json={"weights": {"tiny@prod": 0, "tiny:2": 1}}).status_code == 401
    r = client.put("/admin/routes/support", json={"weights": {"tiny@prod": 0, "tiny:2": 1}}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"support": {"tiny@prod": 0.0, "tiny:2": 1.0}}
    assert {ask(client, user=u) for u in list(served)[:8]} == {"tiny:2"}
    assert client.get("/admin/routes", headers=AUTH).json()["support"]["tiny:2"] == 1.0

    missing = client.put("/admin/routes/support", json={"weights": {"tiny:7": 1}}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert client.put("/admin/routes/support", json={"weights": {}}, headers=AUTH).status_code == 400
    assert client.put("/admin/routes/support", json={"wieghts": {"tiny:1": 1}}, headers=AUTH).status_code == 400

    metrics = client.get("/metrics", headers=AUTH).text
    assert 'slmops_requests_total{model="support",status="200",version="tiny:1"}' in metrics
    assert 'slmops_requests_total{model="support",status="200",version="tiny:2"}' in metrics


def test_admin_endpoints_are_off_without_an_api_key(serve_store):
    with TestClient(create_app(serve_store, ServeConfig(threads=1))) as c:
        r = c.put("/admin/routes/x", json={"weights": {"tiny:1": 1}})
        assert r.status_code == 403 and "--api-key" in r.json()["error"]["message"]
