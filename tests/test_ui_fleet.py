"""The Fleet page in a real browser: a simulated fleet on a real Mosquitto, a roll-out driven by
the real controller, watched live on the page and paused, resumed and rolled back from it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slmops.models.store import ModelStore
from tests.test_ui_browser import (  # noqa: F401 (browser is a fixture)
    CHROMIUM,
    KEY,
    Page,
    _free_port,
    _stop,
    _wait_http,
    browser,
    shot,
    wait_js,
)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")

GATE = "probe_score >= baseline.probe_score - 5 and p95_ms <= 1.3 * baseline.p95_ms"
FLEET = "ui-fleet"


def test_the_fleet_page_follows_a_roll_out_and_controls_it(tmp_path: Path, mosquitto: str, browser) -> None:  # noqa: F811
    from slmops.fleet import mqtt, rollouts
    from slmops.fleet.rollout import plan, run_controller
    from slmops.fleet.rollstore import RolloutStore, Target
    from slmops.fleet.simulator import Simulator, parse_labels
    from slmops.fleet.view import FleetView

    home = tmp_path / "home"
    ModelStore(home)
    broker = mqtt.parse_broker(mosquitto)
    sim = Simulator(broker, FLEET, 12, labels=parse_labels("zone=a|b"), report_interval=0.4, download_s=(0.2, 0.5),
                    probe_s=0.1).start().run_in_thread()
    port = _free_port()
    env = {**os.environ, "SLMOPS_HOME": str(home)}
    ui = subprocess.Popen([sys.executable, "-m", "slmops", "ui", "--port", str(port), "--api-key", KEY,
                           "--broker", mosquitto, "--fleet", FLEET], env=env, stdout=subprocess.DEVNULL,
                          stderr=(tmp_path / "ui.log").open("w"))
    view = FleetView(broker, FLEET).start()
    rstore = RolloutStore(home)
    rec = None
    world = {"shots": tmp_path}
    try:
        assert view.wait_synced()
        _wait_http(f"http://127.0.0.1:{port}/login", ui, tmp_path / "ui.log")
        new = "sha256:" + hashlib.sha256(b"ui-new").hexdigest()
        target = Target(reference=f"oci://127.0.0.1:1/{FLEET}@{new}", digest=new, format="gguf", served_name=FLEET)
        rec = plan(FLEET, target, view.devices(), waves="1,50%,100%", bake_s=1.5, gate=GATE, activate_timeout_s=20)
        rstore.create(rec)
        controller = threading.Thread(target=run_controller, args=(rstore, rec.id, view), kwargs={"tick_s": 0.1},
                                      daemon=True)
        controller.start()

        p = Page(browser, f"http://127.0.0.1:{port}", viewport={"width": 1280, "height": 1000})
        p.page.on("dialog", lambda d: d.accept())
        # without the key, a control is refused and nothing changes
        p.page.goto(f"/fleet/rollouts/{rec.id}")
        p.page.click("button[data-action=pause]")
        p.page.wait_for_selector("#progress p.error")
        assert "needs the API key" in p.page.inner_text("#progress p.error")
        assert rstore.load(rec.id).status == "running"
        p.errors.clear()

        p.page.goto("/login?next=/fleet")
        p.page.fill("input[name=key]", KEY)
        p.page.click("form button[type=submit]")
        p.page.wait_for_url("**/fleet")
        p.page.wait_for_selector('.fleet-summary[data-devices="12"]')
        assert p.page.locator("tr.device-row").count() == 12
        assert p.page.locator(f'tr.rollout-row[data-id="{rec.id}"]').count() == 1
        shot(world, p.page, "fleet")

        # live progress: the wave moves on while the page stays loaded (no navigation)
        p.page.goto(f"/fleet/rollouts/{rec.id}")
        p.page.evaluate("() => { window.stayed = true; }")
        wait_js(p.page, "() => +document.querySelector('.rollout-progress').dataset.wave >= 2", 40)
        assert p.page.evaluate("() => window.stayed === true")
        wave1 = p.page.locator('.gate[data-gate-wave="1"]')
        assert "passed" in wave1.inner_text()
        assert wave1.locator('tr[data-row=baseline] td').count() > 1
        assert any(c.strip() not in ("-", "") for c in
                   wave1.locator("tr[data-row=wave] td").all_inner_texts()[1:])  # the wave's own numbers

        p.page.click("button[data-action=pause]")
        wait_js(p.page, "() => document.querySelector('.rollout-progress').dataset.status === 'paused'")
        assert rstore.load(rec.id).status == "paused"
        controller.join(20)
        assert not controller.is_alive()  # a paused roll-out releases its controller

        p.page.click("button[data-action=resume]")  # starts a controller process again
        wait_js(p.page, "() => document.querySelector('.rollout-progress').dataset.status === 'succeeded'", 90)
        assert set(sim.summary()["versions"]) == {new} and rstore.load(rec.id).status == "succeeded"
        shot(world, p.page, "rollout")

        p.page.click("button[data-action=rollback]")
        wait_js(p.page, "() => document.querySelector('.rollout-progress').dataset.status === 'rolled_back'", 90)
        assert set(sim.summary()["versions"]) == {sim.initial.digest}
        assert p.errors == []
        p.close()
    finally:
        if rec is not None and not rstore.load(rec.id).done:
            rollouts.abort(home, rec.id)
        view.close()
        sim.close()
        _stop(ui)
