"""Roll-outs on a real Mosquitto with the simulated fleet: a bad version contained in wave 1, a
regression on 30% of the devices caught at the 10% wave, the CLI's controller process killed
with SIGKILL, a second controller refused, the roll-out resumed to the end, and a broker restart
in the middle of a roll-out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time

import pytest

from slmops.fleet import mqtt, oci, rollouts
from slmops.fleet.protocol import DesiredState
from slmops.fleet.rollout import plan
from slmops.fleet.rollstore import RolloutStore, Target
from slmops.fleet.simulator import Simulator, parse_fault, parse_labels
from slmops.fleet.view import FleetView
from slmops.models.store import ModelStore
from tests.fleet_helpers import add_tiny

GATE = "probe_score >= baseline.probe_score - 5 and p95_ms <= 1.3 * baseline.p95_ms"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _sim(mosquitto, fleet, n, faults=(), labels="zone=a|b|c"):
    return Simulator(mqtt.parse_broker(mosquitto), fleet, n, labels=parse_labels(labels),
                     faults=[parse_fault(f) for f in faults], report_interval=0.4, download_s=(0.2, 0.6),
                     probe_s=0.1).start().run_in_thread()


def _rollout(tmp_path, mosquitto, fleet, waves="1,10%,50%,100%"):
    broker = mqtt.parse_broker(mosquitto)
    view = FleetView(broker, fleet).start()
    assert view.wait_synced()
    new = _digest(fleet + "-new")
    target = Target(reference=f"oci://127.0.0.1:1/{fleet}@{new}", digest=new, format="gguf", served_name=fleet)
    store = RolloutStore(tmp_path)
    rec = plan(fleet, target, view.devices(), waves=waves, bake_s=1.5, gate=GATE, activate_timeout_s=20)
    store.create(rec)
    return store, rec, view


def _received(sim, digest):
    return {d.id for d in sim.devices.values() if digest in d.known or d.desired and d.desired.digest == digest
            and d.status in ("downloading", "verifying", "probing")}


def test_bad_version_is_caught_in_wave_one_and_nobody_else_gets_it(tmp_path, mosquitto):
    fleet = "ro-bad"
    sim = _sim(mosquitto, fleet, 200, faults=["probe:-20"])
    try:
        store, rec, view = _rollout(tmp_path, mosquitto, fleet)
        try:
            from slmops.fleet.rollout import run_controller

            out = run_controller(store, rec.id, view, tick_s=0.1)
        finally:
            view.close()
        assert out.status == "failed" and out.gates[-1]["wave"] == 1 and len(out.touched) == 1
        assert "gate failed" in out.reason and ">= " in out.reason  # carries the numbers
        assert _received(sim, rec.target.digest) == set(out.touched)
        assert out.finished_at - out.rollback_started_at < 30
        assert set(sim.summary()["versions"]) == {sim.initial.digest}
    finally:
        sim.close()


def test_regression_on_thirty_percent_is_caught_at_the_ten_percent_wave(tmp_path, mosquitto):
    fleet = "ro-30pct"
    sim = _sim(mosquitto, fleet, 200, faults=["probe:-20@zone=a"], labels="zone=a|a|a|b|b|b|b|c|c|c")
    try:
        store, rec, view = _rollout(tmp_path, mosquitto, fleet)
        try:
            from slmops.fleet.rollout import run_controller

            out = run_controller(store, rec.id, view, tick_s=0.1)
        finally:
            view.close()
        assert out.status == "failed" and out.gates[-1]["wave"] <= 2, out.reason
        assert len(out.touched) <= rec.cuts[1] == 20
        assert _received(sim, rec.target.digest) <= set(out.touched)
        assert "zone=a" in out.reason or out.gates[-1]["wave"] == 1  # the label group named
    finally:
        sim.close()


class _Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


def _cli(home, *args, check=True):
    """The real command in-process (each `python -m slmops` costs seconds of imports); library
    errors map to exit codes as in ``slmops.cli.main``. The controllers it starts are processes."""
    from typer.testing import CliRunner

    from slmops.cli import app
    from slmops.errors import SlmopsError

    res = CliRunner().invoke(app, list(args), env={"SLMOPS_HOME": str(home)})
    exc = res.exception
    if isinstance(exc, SlmopsError):
        out = _Result(exc.exit_code, res.stdout, str(exc))
    elif exc is not None and not isinstance(exc, SystemExit):
        raise exc
    else:
        out = _Result(res.exit_code, res.stdout, res.stderr if res.stderr_bytes is not None else "")
    if check and out.returncode != 0:
        raise AssertionError(f"slmops {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def _wait(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_cli_controller_killed_then_resumed_and_a_second_one_refused(tmp_path, mosquitto, registry, tiny_model_dir):
    fleet = "ro-cli"
    home = tmp_path / "home"
    add_tiny(ModelStore(home), tiny_model_dir)
    sim = _sim(mosquitto, fleet, 30)
    rstore = RolloutStore(home)
    try:
        bad = _cli(home, "rollout", "start", "--fleet", fleet, "--model", "tiny:1", "--broker", mosquitto,
                   "--registry", registry, "--gate", GATE, "--waves", "1,50%", check=False)
        assert bad.returncode == 2 and "does not end at 100%" in bad.stderr
        bad = _cli(home, "rollout", "start", "--fleet", fleet, "--model", "nope:3", "--broker", mosquitto,
                   "--registry", registry, "--gate", GATE, "--bake", "2s", check=False)
        assert bad.returncode == 2 and "nope" in bad.stderr
        assert rstore.list() == []
        out = _cli(home, "rollout", "start", "--fleet", fleet, "--model", "tiny:1", "--broker", mosquitto,
                   "--registry", registry, "--gate", GATE, "--waves", "1,30%,100%", "--bake", "2s", "--json")
        rid = json.loads(out.stdout)["id"]
        lease = _wait(lambda: rstore.lease_holder(fleet), what="the controller's lease")
        # a second controller on the same fleet refuses
        second = _cli(home, "rollout", "resume", rid, "--foreground", "--broker", mosquitto, check=False)
        assert second.returncode == 2 and "already driven by a controller" in second.stderr
        _wait(lambda: rstore.load(rid).wave >= 1, what="wave 2")
        os.kill(lease["pid"], signal.SIGKILL)
        _wait(lambda: rstore.lease_holder(fleet) is None, what="the dead controller's lease to lapse")
        mid = rstore.load(rid)
        assert mid.status == "running"
        time.sleep(1.0)
        assert rstore.load(rid).updated_at == mid.updated_at  # nobody drives it now
        _cli(home, "rollout", "resume", rid, "--broker", mosquitto)
        watched = json.loads(_cli(home, "rollout", "status", rid, "--watch", "--json").stdout)  # blocks to the end
        done = rstore.load(rid)
        assert watched["status"] == done.status and done.done
        assert done.status == "succeeded", done.reason
        assert [g["wave"] for g in done.gates] == [1, 2, 3]  # no wave redone or skipped
        status = json.loads(_cli(home, "fleet", "status", "--fleet", fleet, "--broker", mosquitto, "--json").stdout) \
            if _has_fleet_group() else rollouts.fleet_status(home, mqtt.parse_broker(mosquitto), fleet)
        assert status["versions"] == {done.target.digest: 30} and status["last_rollout"]["status"] == "succeeded"
        art = oci.resolve(oci.Client(registry), oci.parse_oci(done.target.reference))
        assert art.digest == done.target.digest and art.config["name"] == "tiny"
        listed = json.loads(_cli(home, "rollout", "list", "--json").stdout)
        assert [r["id"] for r in listed] == [rid]
    finally:
        sim.close()


def _has_fleet_group() -> bool:
    from slmops.cli import app

    return any(g.name == "fleet" for g in app.registered_groups)


def test_desired_state_of_simulated_devices_survives_a_simulator_restart(mosquitto):
    fleet = "ro-restart"
    broker = mqtt.parse_broker(mosquitto)
    sim = _sim(mosquitto, fleet, 5)
    new = _digest("x")
    view = FleetView(broker, fleet).start()
    try:
        assert view.wait_synced()
        view.publish_desired({"sim-0000": DesiredState(reference="oci://h:1/x@" + new, digest=new, format="hf",
                                                       served_name=fleet, generation=2)})
        _wait(lambda: view.devices()["sim-0000"].active_digest == new, what="the switch")
    finally:
        sim.close()
    sim2 = _sim(mosquitto, fleet, 5)
    try:
        assert sim2.devices["sim-0000"].active.digest == new  # it comes back on what it was told to run
        _wait(lambda: view.devices()["sim-0000"].online, what="online again")
    finally:
        sim2.close()
        view.close()


@pytest.fixture(autouse=True)
def _no_env_broker(monkeypatch):
    monkeypatch.delenv("SLMOPS_BROKER", raising=False)


def test_broker_restart_mid_rollout_pauses_then_continues(tmp_path):
    """A broker of our own (persistent, so retained states survive), stopped during a bake and
    started again on the same port: the roll-out waits, then finishes."""
    import threading

    from slmops.fleet import services
    from slmops.fleet.rollout import run_controller

    if not any(shutil.which(c) for c in services.MOSQUITTO_CANDIDATES):
        pytest.skip("mosquitto is not installed (system package `mosquitto`, see the README set-up)")
    svc, proc = services.start_mosquitto(tmp_path / "mq")
    url = svc.url
    fleet = "ro-outage"
    sim = _sim(url, fleet, 20)
    try:
        store, rec, view = _rollout(tmp_path / "home", url, fleet, waves="50%,100%")
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("rec", run_controller(store, rec.id, view, tick_s=0.1)))
        t.start()
        _wait(lambda: store.load(rec.id).phase == "bake", what="the first bake")
        proc.terminate()
        proc.wait(timeout=10)
        _wait(lambda: store.load(rec.id).broker_down_since is not None, what="the outage noticed")
        time.sleep(1.0)
        assert not store.load(rec.id).gates  # no gate evaluated while the broker is away
        svc2, proc = services.start_mosquitto(tmp_path / "mq", port=svc.port)
        t.join(90)
        out = result["rec"]
        assert out.status == "succeeded", out.reason
        texts = [e["text"] for e in out.events]
        assert any("broker unreachable" in x for x in texts) and any("broker back" in x for x in texts)
        assert [g["wave"] for g in out.gates] == [1, 2]
        view.close()
    finally:
        sim.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_fleet_simulate_and_fleet_status_commands(tmp_path, mosquitto):
    fleet = "ro-simcli"
    res = _cli(tmp_path, "fleet", "simulate", "--fleet", fleet, "--devices", "12", "--duration", "1.5",
               "--labels", "zone=a|b,hw=x|y|z", "--fault", "offline:0.5", "--broker", mosquitto, "--json")
    summary = json.loads(res.stdout)
    assert summary["devices"] == 12 and 0 < summary["online"] < 12 and summary["published"] >= 36
    status = json.loads(_cli(tmp_path, "fleet", "status", "--fleet", fleet, "--broker", mosquitto, "--json").stdout)
    assert status["devices"] == 12 and status["offline"] == 12  # the simulator marks its devices offline on exit
    assert list(status["versions"].values()) == [12] and status["rollouts"] == []
    text = _cli(tmp_path, "fleet", "status", "--fleet", fleet, "--broker", mosquitto).stdout
    assert "12 device(s)" in text and "12 offline" in text
    bad = _cli(tmp_path, "fleet", "simulate", "--fleet", fleet, "--fault", "slow:2", "--broker", mosquitto, check=False)
    assert bad.returncode == 2 and "unknown kind 'slow'" in bad.stderr


def test_flapping_devices_end_on_the_old_version_after_a_failed_rollout(tmp_path, mosquitto):
    """Devices that go offline and back during a roll-out that fails: when they return they get
    the previous version (their retained desired state was put back), never the new one."""
    from slmops.fleet.rollout import run_controller

    fleet = "ro-flap"
    sim = Simulator(mqtt.parse_broker(mosquitto), fleet, 12, faults=[parse_fault("flap:0.5"), parse_fault("probe:-20")],
                    report_interval=0.4, download_s=(0.2, 0.4), probe_s=0.1, flap_period_s=2.0).start().run_in_thread()
    try:
        broker = mqtt.parse_broker(mosquitto)
        view = FleetView(broker, fleet).start()
        assert view.wait_synced()
        new = _digest("flap-new")
        target = Target(reference=f"oci://127.0.0.1:1/{fleet}@{new}", digest=new, format="gguf", served_name=fleet)
        store = RolloutStore(tmp_path)
        rec = plan(fleet, target, view.devices(), waves="50%,100%", bake_s=1.5, gate=GATE, max_unavailable="100%",
                   activate_timeout_s=5, rollout_id="ro-flap-1")
        store.create(rec)
        out = run_controller(store, rec.id, view, tick_s=0.1)
        view.close()
        assert out.status == "failed" and len(out.touched) == 6
        flappers = {d.id for d in sim.devices.values() if sim._faults(d, "flap", None)}
        assert flappers & set(out.touched)  # some touched devices were flapping
        time.sleep(3.0)  # every flapping device has been back online since
        assert all(d.active.digest == sim.initial.digest for d in sim.devices.values())
        assert all(d.desired.digest == sim.initial.digest for d in sim.devices.values())
    finally:
        sim.close()
