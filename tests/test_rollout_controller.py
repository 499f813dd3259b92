"""The roll-out controller over an in-memory fleet and a fake clock: waves, gates, rollback,
budgets, missing data, broker outages, and a controller killed at every step and resumed."""

from __future__ import annotations

import pytest

from slmops.errors import SlmopsError
from slmops.fleet.protocol import ActiveModel, DesiredState, ReportedState, Telemetry
from slmops.fleet.rollout import Controller, plan
from slmops.fleet.rollstore import LeaseHeld, RolloutStore, Target
from slmops.fleet.view import DeviceView

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
GATE = "probe_score >= baseline.probe_score - 5 and p95_ms <= 1.2 * baseline.p95_ms"


class Killed(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class FakeFleet:
    """Devices that switch to their desired digest on the next ``advance`` and report a window each."""

    def __init__(self, n: int, clock: Clock, *, zones: str = "abc", bad: dict[str, float] | None = None,
                 offline: set[str] = frozenset(), fail_download: set[str] = frozenset()) -> None:
        self.clock, self.connected = clock, True
        self.bad = bad or {}  # zone -> probe delta on NEW
        self.offline, self.fail_download = set(offline), set(fail_download)
        self.labels = {f"d{i:02d}": {"zone": zones[i % len(zones)]} for i in range(n)}
        self.desired = {d: DesiredState(reference="oci://r/m@" + OLD, digest=OLD, format="hf", served_name="m",
                                        generation=3) for d in self.labels}
        self.active = {d: OLD for d in self.labels}
        self.failed: dict[str, str] = {}
        self.windows: list[Telemetry] = []
        self.published: list[tuple[str, DesiredState | None]] = []
        self.ever_new: set[str] = set()
        self.kill_at: tuple[int, str] | None = None  # (publish call number, "before"|"after")
        self.calls = 0

    def devices(self) -> dict[str, DeviceView]:
        out = {}
        for d, lab in self.labels.items():
            st = ReportedState(device_id=d, fleet="f", labels=lab, status="failed" if d in self.failed else "ok",
                               reason=self.failed.get(d), desired_digest=self.desired[d].digest if self.desired[d]
                               else None, active=ActiveModel(digest=self.active[d], reference="r", store_ref="m:1"),
                               report_interval_s=2.0)
            out[d] = DeviceView(d, st, self.desired[d], d not in self.offline)
        return out

    def windows_since(self, since: float) -> list[Telemetry]:
        return [w for w in self.windows if w.sent_at >= since]

    def publish_desired(self, states: dict[str, DesiredState | None]) -> None:
        self.calls += 1
        if self.kill_at == (self.calls, "before"):
            raise Killed
        for d, ds in states.items():
            self.desired[d] = ds
            self.published.append((d, ds))
        if self.kill_at == (self.calls, "after"):
            raise Killed

    def advance(self, seconds: float = 1.0) -> None:
        self.clock.t += seconds
        for d in self.labels:
            if d in self.offline:
                continue
            want = self.desired[d]
            if want and want.digest != self.active[d]:
                if want.digest == NEW and d in self.fail_download:
                    self.failed[d] = "download failed"
                else:
                    self.active[d] = want.digest
                    self.failed.pop(d, None)
                    self.ever_new |= {d} if want.digest == NEW else set()
            probe = 80.0 + (self.bad.get(self.labels[d]["zone"], 0.0) if self.active[d] == NEW else 0.0)
            self.windows.append(Telemetry(device_id=d, digest=self.active[d], sent_at=self.clock.t, window_s=1.0,
                                          requests=5, errors=0, p50_ms=100.0, p95_ms=200.0, probe_score=probe))


def _target() -> Target:
    return Target(reference="oci://r/m@" + NEW, digest=NEW, format="hf", served_name="m", source="m:2")


def _start(tmp_path, fleet: FakeFleet, **kw):
    store = RolloutStore(tmp_path)
    args = {"waves": "1,10%,50%,100%", "bake_s": 4.0, "gate": GATE, "activate_timeout_s": 10.0} | kw
    rec = plan("f", _target(), fleet.devices(), rollout_id="ro-test", **args)
    store.create(rec)
    return store, rec


def _drive(store, fleet, clock, limit=400):
    ctl = Controller(store, "ro-test", fleet, clock=clock)
    for _ in range(limit):
        rec = ctl.tick()
        if rec.done or rec.status == "paused":
            return rec
        fleet.advance()
    raise AssertionError("roll-out did not end")


def test_good_version_goes_out_wave_by_wave(tmp_path):
    clock = Clock()
    fleet = FakeFleet(30, clock)
    store, rec = _start(tmp_path, fleet)
    assert rec.cuts == [1, 3, 15, 30]
    out = _drive(store, fleet, clock)
    assert out.status == "succeeded" and [g["wave"] for g in out.gates] == [1, 2, 3, 4]
    assert all(g["passed"] for g in out.gates)
    assert set(fleet.active.values()) == {NEW}
    # generations grow from each device's previous desired state; previous states are recorded
    assert {ds.generation for _, ds in fleet.published} == {4}
    assert all(p["digest"] == OLD for p in out.previous.values())


def test_bad_version_caught_in_wave_one_and_rolled_back(tmp_path):
    clock = Clock()
    fleet = FakeFleet(30, clock, bad={"a": -20, "b": -20, "c": -20})
    store, _ = _start(tmp_path, fleet)
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and len(out.touched) == 1
    assert fleet.ever_new == set(out.touched)  # nobody outside wave 1 ever got it
    assert set(fleet.active.values()) == {OLD}
    assert "wave 1/4: gate failed" in out.reason and "60 >= 80 - 5" in out.reason  # the numbers
    assert out.finished_at - out.rollback_started_at <= 3


def test_regression_on_one_label_value_is_caught_per_label(tmp_path):
    clock = Clock()
    fleet = FakeFleet(60, clock, bad={"b": -10})  # a third of the fleet: the mean drops only 3.3
    store, _ = _start(tmp_path, fleet, waves="10%,100%")
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and len(out.gates) == 1
    assert "on devices with zone=b" in out.reason
    assert fleet.ever_new <= set(out.wave_devices(0)) and set(fleet.active.values()) == {OLD}


def test_missing_telemetry_fails_safe_unless_continue(tmp_path):
    clock = Clock()
    fleet = FakeFleet(4, clock)
    gate = "ttft_ms <= 1.2 * baseline.ttft_ms"  # the devices never report ttft
    store, _ = _start(tmp_path, fleet, waves="100%", gate=gate)
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and "no value for ttft_ms, baseline.ttft_ms" in out.reason
    assert "failing safe" in out.reason and set(fleet.active.values()) == {OLD}
    fleet2 = FakeFleet(4, clock)
    store2, _ = _start(tmp_path / "b", fleet2, waves="100%", gate=gate, on_missing_data="continue")
    assert _drive(store2, fleet2, clock).status == "succeeded"


def test_single_wave_compares_with_the_window_before_the_rollout(tmp_path):
    clock = Clock()
    fleet = FakeFleet(6, clock, bad={"a": -20, "b": -20, "c": -20})
    store, _ = _start(tmp_path, fleet, waves="100%")
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and "60 >= 80 - 5" in out.reason
    assert any("baseline before the roll-out" in e["text"] for e in out.events)


def test_unavailable_devices_count_against_the_budget(tmp_path):
    clock = Clock()
    fleet = FakeFleet(20, clock, fail_download={"d00", "d01", "d02", "d03", "d04", "d05"})
    store, _ = _start(tmp_path, fleet, waves="100%", max_unavailable="10%")
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and "6 of 20 device(s) unavailable" in out.reason and "download failed" in out.reason
    fleet2 = FakeFleet(20, clock, fail_download={"d00"}, offline={"d07"})
    store2, _ = _start(tmp_path / "b", fleet2, waves="50%,100%", max_unavailable="2")
    out2 = _drive(store2, fleet2, clock)
    assert out2.status == "succeeded" and out2.order[-1] == "d07"  # offline devices go last


def test_bad_input_is_refused_before_anything_changes(tmp_path):
    clock = Clock()
    fleet = FakeFleet(5, clock)
    with pytest.raises(SlmopsError, match="no devices matching --select zone=z"):
        _start(tmp_path, fleet, select="zone=z")
    with pytest.raises(SlmopsError, match="does not end at 100%"):
        _start(tmp_path, fleet, waves="1,50%")
    with pytest.raises(SlmopsError, match="shorter than the devices' report interval"):
        _start(tmp_path, fleet, bake_s=1.0)
    with pytest.raises(SlmopsError, match="not a fleet metric"):
        _start(tmp_path, fleet, gate="latency < 3")
    assert fleet.published == [] and RolloutStore(tmp_path).list() == []


def test_broker_outage_pauses_and_restarts_the_bake(tmp_path):
    clock = Clock()
    fleet = FakeFleet(10, clock)
    store, _ = _start(tmp_path, fleet, waves="100%", on_missing_data="continue")
    ctl = Controller(store, "ro-test", fleet, clock=clock)
    for _ in range(6):
        rec = ctl.tick()
        fleet.advance()
        if rec.phase == "bake":
            break
    assert rec.phase == "bake"
    fleet.connected = False
    for _ in range(20):
        rec = ctl.tick()
        clock.t += 1
    assert rec.phase == "bake" and not rec.gates and rec.broker_down_since is not None
    fleet.connected = True
    rec = ctl.tick()
    assert rec.bake_started_at == clock.t and "broker back" in rec.events[-1]["text"]
    assert _drive(store, fleet, clock).status == "succeeded"


@pytest.mark.parametrize("mode", ["before", "after"])
def test_controller_killed_at_every_publish_resumes_without_redo_or_skip(tmp_path, mode):
    """Kill the controller at each publish of a full roll-out (before the broker got it and after,
    before the record says so); a fresh controller continues from the record."""
    for kill in range(1, 8):
        clock = Clock()
        fleet = FakeFleet(20, clock)
        store, _ = _start(tmp_path / f"{mode}{kill}", fleet)
        fleet.kill_at = (kill, mode)
        out = None
        for _ in range(10):
            try:
                out = _drive(store, fleet, clock)
                break
            except Killed:
                fleet.kill_at = None
                fleet.advance()
        assert out is not None and out.status == "succeeded", (mode, kill)
        assert [g["wave"] for g in out.gates] == [1, 2, 3, 4], (mode, kill)
        assert set(fleet.active.values()) == {NEW}
        assert {ds.generation for _, ds in fleet.published} == {4}  # the same intent, re-published at most
        assert all(p["digest"] == OLD for p in out.previous.values())


def test_killed_during_rollback_still_restores_everyone(tmp_path):
    clock = Clock()
    fleet = FakeFleet(20, clock, bad={"a": -20, "b": -20, "c": -20})
    store, _ = _start(tmp_path, fleet, waves="50%,100%", gate="probe_score >= 70")
    fleet.kill_at = (2, "before")  # the first rollback publish
    with pytest.raises(Killed):
        _drive(store, fleet, clock)
    assert store.load("ro-test").status == "rolling_back"
    fleet.kill_at = None
    out = _drive(store, fleet, clock)
    assert out.status == "failed" and set(fleet.active.values()) == {OLD}
    assert {ds.generation for d, ds in fleet.published if ds.digest == OLD} == {5}


def test_pause_abort_and_asked_rollback(tmp_path):
    from slmops.fleet import rollouts

    clock = Clock()
    fleet = FakeFleet(10, clock)
    store, _ = _start(tmp_path, fleet, waves="1,100%", on_missing_data="continue")
    ctl = Controller(store, "ro-test", fleet, clock=clock)
    ctl.tick()
    rollouts.pause(tmp_path, "ro-test")
    assert ctl.tick().status == "paused"
    with pytest.raises(SlmopsError, match="only a running"):
        rollouts.pause(tmp_path, "ro-test")
    rollouts.resume(tmp_path, "ro-test", broker=None, spawn=False)  # type: ignore[arg-type]
    out = _drive(store, fleet, clock)
    assert out.status == "succeeded" and set(fleet.active.values()) == {NEW}
    rollouts.rollback(tmp_path, "ro-test", broker=None, spawn=False)  # type: ignore[arg-type]
    out = _drive(store, fleet, clock)
    assert out.status == "rolled_back" and set(fleet.active.values()) == {OLD}
    with pytest.raises(SlmopsError, match="already rolled_back"):
        rollouts.rollback(tmp_path, "ro-test", broker=None, spawn=False)  # type: ignore[arg-type]
    with pytest.raises(SlmopsError, match="already ended"):
        rollouts.abort(tmp_path, "ro-test")


def test_second_controller_is_refused_by_the_lease(tmp_path):
    store = RolloutStore(tmp_path)
    store.acquire("f", "ro-1", "token-a")
    store.acquire("f", "ro-1", "token-a")  # renewing is fine
    with pytest.raises(LeaseHeld, match="already driven by a controller"):
        store.acquire("f", "ro-2", "token-b")
    store.release("f", "token-a")
    store.acquire("f", "ro-2", "token-b")


def test_abort_keeps_active_devices_and_reverts_the_rest(tmp_path):
    from slmops.fleet import rollouts

    clock = Clock()
    fleet = FakeFleet(6, clock, offline={"d03"})
    store, _ = _start(tmp_path, fleet, waves="100%", max_unavailable="2")
    ctl = Controller(store, "ro-test", fleet, clock=clock)
    while ctl.tick().phase == "assign":  # the baseline window first, then the assignment
        fleet.advance()
    fleet.advance()
    assert fleet.desired["d03"].digest == NEW  # retained: an offline device would get it on return
    rec = rollouts.abort(tmp_path, "ro-test", io=fleet)
    assert rec.status == "aborted"
    assert "5 device(s) keep the new version, 1 not on it yet go back" in rec.events[-1]["text"]
    assert fleet.desired["d03"].digest == OLD and fleet.desired["d03"].generation == 5
    assert {d for d, ds in fleet.desired.items() if ds.digest == NEW} == set(fleet.labels) - {"d03"}
    assert ctl.tick().status == "aborted"  # the controller stops on its next tick
