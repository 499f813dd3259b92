"""The console without a browser: Prometheus scrapes into rates and percentiles, the lineage
graph, run comparison, and who may read and act (loopback, API key, session, CSRF, Origin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slmops.errors import SlmopsError
from slmops.models.store import ModelStore
from slmops.pipeline.run import PipelineRun, StepState
from slmops.serve.metrics import ServeMetrics
from slmops.ui import UIConfig, create_ui_app
from slmops.ui.graph import build_graph, render_svg
from slmops.ui.live import derive, parse_metrics, quantile
from slmops.ui.views import compare

KEY = "a-long-enough-key"


def _add(store: ModelStore, name: str, parents: list[str] | None = None, **recipe) -> str:
    with store.staging() as staged:
        (staged / "m").mkdir()
        (staged / "m" / "weights.bin").write_bytes(b"x" * 10)
        return store.add(staged / "m", name, "hf", parents=parents, recipe=recipe).ref


@pytest.fixture()
def family(store: ModelStore) -> ModelStore:
    base = _add(store, "base", kind="pull", source="pypi", gguf_sha256="ab" * 32)
    pruned = _add(store, "student", [base], kind="prune", calibration={"source": "cal.jsonl", "sha256": "cd" * 32})
    tuned = _add(store, "tuned", [pruned], kind="finetune", data={"/data/train.jsonl": "ef" * 32},
                 kd={"teacher": base, "loss": "jsd", "weight": 0.5})
    store.set_alias(tuned, "prod")
    _add(store, "tuned-int4", [tuned], kind="optimize", to="onnx", precision="int4")
    store.update_metrics(tuned, {"eval.classification.tickets": {"primary_metric": "accuracy", "score": 0.9,
                                                                 "ci": [0.8, 0.97], "latency_p50_ms": 12.0}})
    return store


def test_a_scrape_becomes_rates_and_percentiles() -> None:
    m = ServeMetrics()
    first = parse_metrics(m.render([]).decode(), t=100.0)
    for seconds in (0.02, 0.03, 0.04, 0.2):
        m.observe_request("tiny", "tiny:1", 200, seconds=seconds, ttft=0.004, completion_tokens=5)
    m.observe_request("tiny", "tiny:1", 429)
    m.model_memory.labels("tiny", "tiny:1").set(3 * 2**20)
    second = parse_metrics(m.render([]).decode(), t=102.0)
    row = derive(second, first)["tiny:1"]
    assert row["requests_per_second"] == 2.5 and row["error_rate_pct"] == 20.0
    assert row["tokens_per_second"] == 10.0 and row["memory_mb"] == 3.0
    assert 25 <= row["latency_p50_ms"] <= 50 and 100 <= row["latency_p95_ms"] <= 250
    assert row["ttft_p50_ms"] <= 5
    assert second.resident_memory_bytes and second.resident_memory_bytes > 0
    assert "requests_per_second" not in derive(second, None)["tiny:1"]  # one scrape has no rate yet
    assert quantile(0.5, {0.1: 0, 0.2: 10, float("inf"): 10}) == pytest.approx(0.15)
    assert quantile(0.5, {0.1: 0, float("inf"): 0}) is None


def test_the_lineage_graph_has_inputs_models_children_and_deployments(family: ModelStore) -> None:
    graph = build_graph(family, "tuned")
    ids = set(graph.nodes)
    assert {"model:base:1", "model:student:1", "model:tuned:1", "model:tuned-int4:1", "alias:tuned@prod"} <= ids
    assert {"data:" + "ef" * 32, "data:" + "cd" * 32, "data:" + "ab" * 32} <= ids
    assert graph.nodes["model:tuned:1"].focus and graph.nodes["data:" + "ef" * 32].label == "train.jsonl"
    edges = {(e.source, e.target, e.label) for e in graph.edges}
    assert ("model:base:1", "model:tuned:1", "kd teacher") in edges  # the KD teacher is a store model
    assert ("model:tuned:1", "model:tuned-int4:1", "optimize") in edges
    for e in graph.edges:  # laid out left to right
        assert graph.nodes[e.source].layer < graph.nodes[e.target].layer, e
    svg = render_svg(graph)
    assert svg.count('class="node') == len(graph.nodes) and 'href="/models/tuned-int4/1"' in svg


def _run(run_id: str, steps: int) -> PipelineRun:
    settings = {"model": "tiny", "max_steps": steps, "lr": 1e-3, "nested": {"a": 1}}
    return PipelineRun(run_id, Path("/nonexistent"), "p", "p.yaml", "succeeded", "2026-01-01T00:00:00", None,
                       {"train": StepState("train", "finetune", "done", f"k{steps}", 1.0, {"train_loss": 1.0 / steps},
                                           settings=settings)}, {"steps": steps})


def test_compare_shows_only_what_differs() -> None:
    diff = compare(_run("a", 2), _run("b", 3))
    changed = {d.name: (d.a, d.b) for d in diff["settings"] if d.changed}
    assert changed == {"vars.steps": ("2", "3"), "train.max_steps": ("2", "3")}
    assert [d.changed for d in diff["steps"]] == [True]
    assert any(d.name == "train.train_loss" and d.changed for d in diff["metrics"])


def _client(store: ModelStore, host: str = "127.0.0.1", **kw) -> TestClient:
    return TestClient(create_ui_app(store, UIConfig(host=host, **kw)), base_url="http://127.0.0.1:8080",
                      follow_redirects=False)


def test_reads_are_open_on_loopback_only_and_host_names_are_checked(family: ModelStore) -> None:
    c = _client(family)
    page = c.get("/models/tuned/1")
    assert page.status_code == 200 and "tuned@prod" in page.text and "default-src 'self'" in page.headers[
        "content-security-policy"]
    assert c.get("/models", headers={"host": "evil.example:8080"}).status_code == 421  # DNS rebinding
    with pytest.raises(SlmopsError, match="not loopback: pass --api-key"):
        UIConfig(host="0.0.0.0")
    exposed = _client(family, host="0.0.0.0", api_key=KEY)
    assert exposed.get("/models").status_code == 303 and exposed.get("/models").headers["location"].startswith(
        "/login")
    assert exposed.get("/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    result = subprocess.run([sys.executable, "-m", "slmops", "ui", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "SLMOPS_UI_API_KEY": ""})
    assert result.returncode == 2 and "--api-key" in result.stderr and "Traceback" not in result.stderr


def test_actions_need_the_key_a_csrf_token_and_the_same_origin(family: ModelStore) -> None:
    readonly = _client(family)
    assert readonly.post("/models/tuned/1/alias", data={"alias": "x"}).status_code == 403
    c = _client(family, api_key=KEY)
    origin = {"origin": "http://127.0.0.1:8080"}
    assert c.post("/models/tuned/1/alias", data={"alias": "staging"}, headers=origin).status_code == 401
    assert c.post("/login", data={"key": "wrong-key-123"}, headers=origin).status_code == 401
    login = c.post("/login", data={"key": KEY, "next": "/models"}, headers=origin)
    assert login.status_code == 303 and "samesite=strict" in login.headers["set-cookie"].lower()
    assert "httponly" in login.headers["set-cookie"].lower()
    assert c.post("/models/tuned/1/alias", data={"alias": "staging"}, headers=origin).status_code == 403  # no CSRF
    page = c.get("/models/tuned/1").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    evil = {"origin": "http://evil.example"}
    assert c.post("/models/tuned/1/alias", data={"alias": "staging", "csrf": csrf}, headers=evil).status_code == 403
    assert family.get("tuned:1").aliases == ["prod"]
    ok = c.post("/models/tuned/1/alias", data={"alias": "staging", "csrf": csrf}, headers=origin)
    assert ok.status_code == 303 and family.get("tuned@staging").ref == "tuned:1"
    # scripts use the bearer key (no cookie, so no CSRF token needed)
    bare = _client(family, api_key=KEY)
    r = bare.post("/models/tuned/1/alias", data={"alias": "staging", "action": "delete"},
                  headers={"authorization": f"Bearer {KEY}", "accept": "application/json"})
    assert r.status_code == 200 and json.loads(r.text)["aliases"] == ["prod"]


def test_the_evaluations_page_draws_intervals_and_serving_without_endpoints_says_how(family: ModelStore) -> None:
    c = _client(family)
    page = c.get("/evaluations").text
    assert "eval.classification.tickets" in page and 'class="ci"' in page and "[0.8, 0.97]" in page
    assert "--serve http://127.0.0.1:8000" in c.get("/serving").text
    assert c.get("/serving/0/sample").status_code == 404
    assert "No pipeline run" in c.get("/runs/nope").text and c.get("/runs/nope").status_code == 404
    assert c.get("/static/htmx.min.js").status_code == 200


def test_the_fleet_page_reads_roll_out_records_and_changes_them_only_with_the_key(store: ModelStore) -> None:
    from slmops.fleet.rollstore import RolloutRecord, RolloutStore, Target

    digest = "sha256:" + "1" * 64
    rec = RolloutRecord(
        id="ro-20260101-000000-abcd", fleet="shop", waves=["1", "100%"], bake_s=2.0, gate="p95_ms <= 100",
        target=Target(reference="oci://r/x@" + digest, digest=digest, format="gguf", served_name="x"),
        order=["d1", "d2", "d3"], cuts=[1, 3], wave=1, phase="bake", touched=["d1"],
        gates=[{"wave": 1, "at": 0.0, "passed": True, "results": [
            {"group": "wave", "passed": True, "evaluated": "80 <= 100", "missing": [], "values": {}}],
            "wave_values": {"p95_ms": 80.0, "devices": 1}, "baseline_values": {"p95_ms": 90.0, "devices": 2}}])
    RolloutStore(store.home).create(rec)
    c = _client(store, api_key=KEY)
    assert "shop" in c.get("/fleet").text
    assert "no MQTT broker" in c.get("/fleet/shop/panel").text
    page = c.get(f"/fleet/rollouts/{rec.id}").text
    assert 'data-wave="2"' in page and "80 &lt;= 100" in page and 'data-row="baseline"' in page
    assert 'data-state="done"' in page and 'data-state="current"' in page
    assert c.get("/fleet/rollouts/ro-nope").status_code == 404
    origin = {"origin": "http://127.0.0.1:8080"}
    assert c.post(f"/fleet/rollouts/{rec.id}/pause", headers=origin).status_code == 401
    assert RolloutStore(store.home).load(rec.id).status == "running"
    bearer = {"authorization": f"Bearer {KEY}", "hx-request": "true"}
    r = c.post(f"/fleet/rollouts/{rec.id}/pause", headers=bearer)
    assert r.status_code == 200 and 'data-status="paused"' in r.text
    assert c.post(f"/fleet/rollouts/{rec.id}/pause", headers=bearer).status_code == 409  # already paused
    assert c.post(f"/fleet/rollouts/{rec.id}/abort", headers=bearer).status_code == 200
    assert RolloutStore(store.home).load(rec.id).status == "aborted"
    assert c.post(f"/fleet/rollouts/{rec.id}/explode", headers=bearer).status_code == 409
