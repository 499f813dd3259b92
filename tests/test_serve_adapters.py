"""Adapter routing: every ``base+adapter`` request for one base goes to one multi-adapter engine;
adapters load into it on first use and requests for different adapters batch together."""

from __future__ import annotations

import threading
import time

import httpx

from slmops.models.artifacts import import_model
from slmops.serve import ServeConfig, create_app
from slmops.serve.runner import BackgroundServer
from tests.test_finetune_adapters import base, base_dir, two_adapters  # noqa: F401 - fixtures

PROMPTS = ["Q: What is the capital of Italy?\nA: ", "Q: What is the capital of France?\nA: "]


def complete(http: httpx.Client, model: str, prompt: str) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})


def test_two_adapters_share_one_base_engine_and_one_batch(store, base, base_dir, two_adapters):  # noqa: F811
    en, sw = two_adapters
    app = create_app(store, ServeConfig(threads=1, max_batch_size=4))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        first = complete(http, f"{base}+{en}", PROMPTS[0])
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["text"] == "Rome"
        assert first.headers["x-slmops-model-version"] == f"{base}+{en}"
        swapped = complete(http, f"{base}+{sw}", PROMPTS[0])  # loads into the same engine
        assert swapped.json()["choices"][0]["text"] == "Paris"
        assert swapped.headers["x-slmops-model-version"] == f"{base}+{sw}"
        [group] = app.state.pool.loaded()
        assert group.key == f"{base}+*" and set(group.engine.adapters) == {en, sw}

        # both adapters in flight at once: they decode in one batch, each row with its own adapter
        hook = group.engine.model.register_forward_hook(lambda *_: time.sleep(0.02))
        out: dict[str, str] = {}

        def ask(model: str) -> None:
            out[model] = complete(http, model, PROMPTS[1]).json()["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(f"{base}+{a}",)) for a in (en, sw)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            hook.remove()
        assert out == {f"{base}+{en}": "Paris", f"{base}+{sw}": "Rome"}
        assert group.worker.stats.max_running == 2

        plain = complete(http, base, PROMPTS[0])  # the bare base is its own (plain) engine
        assert plain.status_code == 200 and plain.json()["choices"][0]["text"] not in ("Rome", "Paris")
        assert len(app.state.pool.loaded()) == 2
        metrics = http.get("/metrics").text
        assert f'slmops_requests_total{{model="{base}+{sw}",status="200",version="{base}+{sw}"}} 2.0' in metrics

        other = import_model(store, base_dir, "other").ref  # an adapter on a base it was not trained on
        wrong = complete(http, f"{other}+{en}", PROMPTS[0])
        assert wrong.status_code == 400 and f"not trained on {other}" in wrong.json()["error"]["message"]

