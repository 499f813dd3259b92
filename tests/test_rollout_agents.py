"""The end-to-end path on three real device agents (tiny models, real Mosquitto and registry):
a good version is promoted wave by wave, then a worse one (its probe fails on the device) is
rolled back automatically to the version before it."""

from __future__ import annotations

import pytest

from slmops.fleet import control, mqtt, oci, rollouts
from slmops.fleet.rollstore import RolloutStore
from slmops.models.store import ModelStore
from tests.fleet_helpers import StateWatch, add_tiny, start_agent

GATE = "probe_score >= baseline.probe_score - 0.5"


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_model_dir, registry):
    """tiny:1 and tiny:2 pass their bundle probe on the device (score 1); worse:1 scores 0 on its own.

    Random tiny models cannot differ in quality (they answer blank lines), so the worse version
    carries a probe it cannot pass, as the pruned student before distillation fails the task's
    labels; the device measures it and reports probe_score 0 in its telemetry."""
    home = tmp_path_factory.mktemp("rollout-agents-home")
    store = ModelStore(home)
    add_tiny(store, tiny_model_dir)
    add_tiny(store, tiny_model_dir, extra={"notes.txt": b"version two\n"})
    add_tiny(store, tiny_model_dir, name="worse", extra={"notes.txt": b"the worse one\n"})
    passes = [{"prompt": "hello there", "expected": ""}]
    fails = [{"prompt": "hello there", "expected": "billing"}]
    pushed = {ref: oci.push(store, ref, oci.parse_oci(f"oci://{registry}/ro-agents/{ref.replace(':', ':v')}"),
                            probe=fails if ref.startswith("worse") else passes, probe_min_score=0.0)
              for ref in ("tiny:1", "tiny:2", "worse:1")}
    return home, store, pushed


def test_three_agents_promote_then_roll_back_a_worse_version(tmp_path, mosquitto, registry, versions):
    home, store, pushed = versions
    fleet = "ro-agents"
    broker = mqtt.parse_broker(mosquitto)
    watch = StateWatch(mosquitto, fleet)
    agents = [start_agent(tmp_path / f"dev{i}", mosquitto, fleet, f"dev{i}", labels={"site": "abc"[i]})
              for i in range(3)]
    try:
        for i in range(3):
            watch.wait(f"dev{i}", lambda s: s.status == "idle", what="idle")
        v1 = pushed["tiny:1"]
        control.assign(broker, fleet, ["dev0", "dev1", "dev2"], reference=str(v1.reference), digest=v1.digest,
                       format="hf", served_name="support")
        for i in range(3):
            watch.wait(f"dev{i}", lambda s: s.active and s.active.digest == v1.digest and s.status == "ok",
                       timeout=60, what="v1 active")

        def roll(model: str):
            rec = rollouts.start(store=store, broker=broker, fleet=fleet, model=model, waves="1,100%", bake_s=1.5,
                                 gate=GATE, max_unavailable="0", activate_timeout_s=60, report_interval_s=0.5,
                                 registry=registry, spawn=False)
            return rollouts.drive(home, rec.id, broker, tick_s=0.2)

        good = roll(f"oci://{registry}/ro-agents/tiny:v2")  # an oci:// reference, resolved by tag
        assert good.status == "succeeded", good.reason
        assert good.target.served_name == "support" and [g["wave"] for g in good.gates] == [1, 2]
        for i in range(3):
            assert watch.states[f"dev{i}"].active.digest == pushed["tiny:2"].digest
        listed = {d.device_id: d.to_dict() for d in control.devices(broker, fleet)}
        assert {d["rollout"] for d in listed.values()} == {good.id}  # `fleet devices` shows the roll-out

        bad = roll(f"oci://{registry}/ro-agents/worse:v1")
        assert bad.status == "failed" and bad.gates[-1]["wave"] == 1, bad.reason
        assert "gate failed" in bad.reason and "0 >= 1 - 0.5" in bad.reason
        assert len(bad.touched) == 1
        for i in range(3):  # the touched device went back; the others never left tiny:2
            watch.wait(f"dev{i}", lambda s: s.active and s.active.digest == pushed["tiny:2"].digest
                       and s.status == "ok", timeout=30, what="back on tiny:2")
        untouched = {"dev0", "dev1", "dev2"} - set(bad.touched)
        assert all(watch.states[d].desired_digest == pushed["tiny:2"].digest for d in untouched)
        status = rollouts.fleet_status(home, broker, fleet)
        assert status["versions"] == {pushed["tiny:2"].digest: 3} and status["last_rollout"]["status"] == "failed"
        assert RolloutStore(home).latest(fleet).id == bad.id
    finally:
        for a in agents:
            a.stop()
        watch.close()
