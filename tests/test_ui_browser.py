"""The web console in a real browser: Playwright drives the system Chromium against a real
`slmops ui` (a subprocess) on a store the real pipeline built from tiny models, watching a real
`slmops serve` (a subprocess) of the registered model with a canary route.

Screenshots of every page go to the pytest tmp folder, and also to $SLMOPS_UI_SCREENSHOTS
when set (`SLMOPS_UI_SCREENSHOTS=docs/screenshots pytest tests/test_ui_browser.py`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ui_store import build_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "console-test-key"
SERVE_KEY = "serve-test-key"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict]:
    """The store, a `slmops serve` with a canary route over router:1 and router:2, and the console."""
    work = tmp_path_factory.mktemp("ui")
    home = work / "home"
    store, run_ids = build_store(home, tiny_model_dir, work)
    env = {**os.environ, "SLMOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("SLMOPS_API_KEY", None)
    cli = [sys.executable, "-m", "slmops"]
    sport, uport = _free_port(), _free_port()
    serve = subprocess.Popen(
        [*cli, "serve", "router:1", "router:2", "--port", str(sport), "--api-key", SERVE_KEY, "--threads", "1",
         "--canary", "router=router:1:50,router:2:50"],
        env=env, stdout=subprocess.DEVNULL, stderr=(work / "serve.log").open("w"))
    ui = subprocess.Popen(
        [*cli, "ui", "--port", str(uport), "--api-key", KEY, "--serve", f"http://127.0.0.1:{sport}/v1",
         "--serve-api-key", SERVE_KEY, "--refresh", "0.5"],
        env=env, stdout=subprocess.DEVNULL, stderr=(work / "ui.log").open("w"))
    try:
        _wait_http(f"http://127.0.0.1:{sport}/health", serve, work / "serve.log")
        _wait_http(f"http://127.0.0.1:{uport}/login", ui, work / "ui.log")
        shots = work / "screenshots"
        shots.mkdir()
        yield {"store": store, "runs": run_ids, "serve": f"http://127.0.0.1:{sport}", "ui": f"http://127.0.0.1:{uport}",
               "shots": shots}
    finally:
        _stop(ui)
        _stop(serve)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Page:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, browser, base: str, **context) -> None:
        self.context = browser.new_context(base_url=base, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self) -> None:
        self.context.close()


def wait_js(page, function: str, timeout: float = 20) -> None:
    """Poll a JS function until it returns true (page.wait_for_function evals a string, which
    the console's CSP, rightly, refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(function):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {function}")
        time.sleep(0.1)


def shot(world: dict, page, name: str) -> None:
    path = world["shots"] / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("SLMOPS_UI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)


def sign_in(p: Page, key: str = KEY) -> None:
    p.page.goto("/login?next=/serving")
    p.page.fill("input[name=key]", key)
    p.page.click("form button[type=submit]")
    p.page.wait_for_url("**/serving")


def send_requests(world: dict, stop: threading.Event, model: str = "router") -> list[str]:
    """Chat requests to the server until ``stop``; returns the version that served each."""
    served: list[str] = []
    with httpx.Client(base_url=world["serve"], headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=30) as c:
        while not stop.is_set():
            r = c.post("/v1/chat/completions", json={"model": model, "max_tokens": 4, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "Hello"}]})
            served.append(r.headers.get("x-slmops-model-version", "") if r.status_code == 200 else str(r.status_code))
            time.sleep(0.05)
    return served


def routes(world: dict) -> dict:
    return httpx.get(world["serve"] + "/admin/routes", headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()


# -- the tests ---------------------------------------------------------------------------------
def test_every_page_loads_without_console_errors(world: dict, browser) -> None:
    old, new = world["runs"]
    pages = {
        "models": ("/models", "Models"),
        "model-version": ("/models/router/2", "router:2"),
        "runs": ("/runs", "Pipeline runs"),
        "run": (f"/runs/{new}", new),
        "compare": (f"/runs/compare?a={old}&b={new}", "Compare runs"),
        "evaluations": ("/evaluations", "Evaluations"),
        "serving": ("/serving", "Serving"),
    }
    p = Page(browser, world["ui"], viewport={"width": 1280, "height": 900})
    try:
        for name, (path, heading) in pages.items():
            resp = p.page.goto(path)
            assert resp is not None and resp.status == 200, (path, resp and resp.status)
            assert heading in p.page.inner_text("h1")
            if name == "run":  # the embedded report rendered in its frame
                frame = p.page.frame_locator("iframe.report")
                assert "ui-demo" in frame.locator("h1").first.inner_text()
                p.page.set_viewport_size({"width": 1280, "height": 1900})  # frames paint only inside the viewport
                p.page.wait_for_timeout(300)
            if name == "serving":
                p.page.wait_for_selector("section.endpoint [data-role=status].up")
                p.page.wait_for_selector("form.route")
            if name == "evaluations":
                assert p.page.locator("svg.ci-chart line.ci").count() >= 2  # whiskers for teacher and students
            shot(world, p.page, name)
            p.page.set_viewport_size({"width": 1280, "height": 900})
            assert p.errors == [], (path, p.errors)
        # the search filters the table in place (htmx), without a page load
        p.page.goto("/models")
        p.page.fill("input[name=q]", "prune")
        wait_js(p.page, "() => document.querySelectorAll('#model-rows tr.model-row').length === 1")
        assert p.page.locator("#model-rows tr.model-row").get_attribute("data-ref") == "ui-demo-prune:1"
        assert p.errors == []
    finally:
        p.close()

    phone = Page(browser, world["ui"], viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        for name, path in (("models-phone", "/models"), ("model-version-phone", "/models/router/2")):
            phone.page.goto(path)
            # nothing sticks out sideways: wide content (the graph) scrolls inside its own box
            assert phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
            shot(world, phone.page, name)
        assert phone.errors == []
    finally:
        phone.close()


def test_the_lineage_graph_shows_the_right_nodes(world: dict, browser) -> None:
    p = Page(browser, world["ui"])
    try:
        p.page.goto("/models/router/2")
        nodes = p.page.locator("svg.lineage g.node")
        labels = {nodes.nth(i).get_attribute("data-id") for i in range(nodes.count())}
        models = {x.split(":", 1)[1] for x in labels if x.startswith("model:")}
        # registered model <- distilled student <- pruned student <- tiny; not the first run's versions
        assert models == {"router:2", "ui-demo-distill:2", "ui-demo-prune:1", "tiny:1"}
        assert p.page.locator("svg.lineage g.node.focus").get_attribute("data-label") == "router:2"
        teachers = [x for x in labels if x.startswith("teacher:")]
        assert len(teachers) == 1 and teachers[0].endswith("#big-teacher")
        data = p.page.locator("svg.lineage g.node-data")
        data_labels = {data.nth(i).get_attribute("data-label") for i in range(data.count())}
        assert "tickets.jsonl" in data_labels and any("synthetic" in x or x.endswith(".jsonl") for x in data_labels)
        assert "alias:router@prod" in labels
        assert f"serve:{world['serve']}" in labels  # deployed: the watched server has it loaded
        assert p.page.locator("svg.lineage path.edge").count() >= 6
        # links: click the pulled base and see its descendants of both runs
        p.page.locator('svg.lineage g[data-label="tiny:1"] a').click()
        p.page.wait_for_url("**/models/tiny/1")
        below = p.page.locator("svg.lineage g.node-model")
        refs = {below.nth(i).get_attribute("data-label") for i in range(below.count())}
        assert {"router:1", "router:2", "ui-demo-distill:1", "ui-demo-distill:2"} <= refs
        assert p.errors == []
    finally:
        p.close()


def test_a_run_comparison_shows_the_changed_setting(world: dict, browser) -> None:
    old, new = world["runs"]
    p = Page(browser, world["ui"])
    try:
        p.page.goto("/runs")
        assert p.page.locator("tr.run-row").count() == 2
        p.page.select_option("#compare-form select[name=a]", old)
        p.page.select_option("#compare-form select[name=b]", new)
        p.page.click("#compare-form button[type=submit]")
        p.page.wait_for_url("**/runs/compare?**")
        rows = p.page.locator('table[data-section=settings] tr.changed')
        changed = {rows.nth(i).get_attribute("data-name"): rows.nth(i).inner_text() for i in range(rows.count())}
        assert "vars.steps" in changed and "2" in changed["vars.steps"] and "3" in changed["vars.steps"]
        assert "distill.train.max_steps" in changed
        assert not any(name.startswith("prune.") for name in changed)  # unchanged settings are left out
        steps = p.page.locator("table[data-section=steps] tr.changed")
        names = {steps.nth(i).get_attribute("data-name") for i in range(steps.count())}
        assert "distill" in names and "prune" not in names
        assert p.page.locator('table[data-section=metrics] tr[data-name="distill.steps"].changed').count() == 1
        assert p.errors == []
    finally:
        p.close()


def test_live_serving_charts_update_while_requests_are_sent(world: dict, browser) -> None:
    p = Page(browser, world["ui"], viewport={"width": 1280, "height": 1100})
    stop = threading.Event()
    result: list[list[str]] = []
    sender = threading.Thread(target=lambda: result.append(send_requests(world, stop)), daemon=True)
    try:
        p.page.goto("/serving")
        p.page.wait_for_selector("section.endpoint [data-role=status].up")
        sender.start()
        # requests/s rises above zero for the served versions, and each chart keeps adding points
        wait_js(p.page, """() => Array.from(document.querySelectorAll('tbody[data-role=latest] tr')).some(
                 tr => tr.dataset.version.startsWith('router:') && parseFloat(tr.children[1].textContent) > 0)""", 30)
        chart = 'figure[data-metric=requests_per_second] polyline[data-series^="router:"]'
        before = int(p.page.locator(chart).first.get_attribute("data-count"))
        wait_js(p.page, f"""() => +document.querySelector('{chart}').dataset.count >= {before + 3}""")
        for metric in ("latency_p50_ms", "ttft_p50_ms", "tokens_per_second", "memory_mb"):
            assert p.page.locator(f'figure[data-metric={metric}] polyline[data-series^="router:"]').count() >= 1
        memory = p.page.locator('figure[data-metric=memory_mb] polyline[data-series="server (RSS)"]')
        assert memory.count() == 1
        shot(world, p.page, "serving-live")
        assert p.errors == []
    finally:
        stop.set()
        sender.join(30)
        p.close()
    assert result and len(result[0]) >= 3 and all(v.startswith("router:") for v in result[0])


def test_an_action_without_the_key_is_refused(world: dict, browser) -> None:
    before = routes(world)
    p = Page(browser, world["ui"])
    try:
        p.page.goto("/serving")
        form = p.page.locator('form.route[data-route="router"]')
        form.locator('input[name="w:router:1"]').fill("0")
        form.locator("button[type=submit]").click()
        p.page.wait_for_selector(".routes p.error")
        assert "needs the API key" in p.page.inner_text(".routes p.error")
        assert routes(world) == before
        # the alias form on a model page: refused too, nothing changes in the store
        p.page.goto("/models/router/1")
        p.page.fill("#alias-form input[name=alias]", "staging")
        p.page.click("#alias-form button[value=set]")
        assert "needs the API key" in p.page.inner_text("p.error")
        assert world["store"].get("router:1").aliases == []
        # a wrong key does not sign in
        p.page.goto("/login")
        p.page.fill("input[name=key]", "not-the-key")
        p.page.click("form button[type=submit]")
        assert "Wrong API key" in p.page.inner_text("p.error")
    finally:
        p.close()
    # signed in, but from another site: the Origin check refuses it even with the session cookie
    p = Page(browser, world["ui"])
    try:
        sign_in(p)
        csrf = p.page.locator("input[name=csrf]").first.get_attribute("value")
        cross = p.context.request.post(world["ui"] + "/serving/0/routes/router", form={"w:router:1": "0",
                                       "w:router:2": "1", "csrf": csrf}, headers={"Origin": "http://evil.example"})
        assert cross.status == 403 and "Cross-site" in cross.text()
        no_token = p.context.request.post(world["ui"] + "/serving/0/routes/router", form={"w:router:1": "0"},
                                          headers={"Origin": world["ui"]})
        assert no_token.status == 403 and "CSRF" in no_token.text()
        assert routes(world) == before
    finally:
        p.close()


def test_a_canary_change_from_the_page_takes_effect_on_the_server(world: dict, browser) -> None:
    p = Page(browser, world["ui"])
    try:
        sign_in(p)
        form = p.page.locator('form.route[data-route="router"]')
        form.locator('input[name="w:router:1"]').fill("0")
        form.locator('input[name="w:router:2"]').fill("100")
        form.locator("button[type=submit]").click()
        p.page.wait_for_selector(".routes p.ok")
        assert "router:2 100" in p.page.inner_text(".routes p.ok")
        share = p.page.locator('form.route[data-route="router"] tr[data-target="router:2"] td.share')
        assert share.inner_text() == "100%"
        assert routes(world) == {"router": {"router:1": 0.0, "router:2": 100.0}}
        stop = threading.Event()
        timer = threading.Timer(2.0, stop.set)
        timer.start()
        served = send_requests(world, stop)
        assert served and set(served) == {"router:2"}
        shot(world, p.page, "serving-canary")
        # aliases change from the page too, once signed in
        p.page.goto("/models/router/1")
        p.page.fill("#alias-form input[name=alias]", "staging")
        p.page.click("#alias-form button[value=set]")
        p.page.wait_for_url("**/models/router/1")
        assert "@staging" in p.page.inner_text("h1")
        assert world["store"].get("router@staging").ref == "router:1"
        assert p.errors == []
    finally:
        p.close()
