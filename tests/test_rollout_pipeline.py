"""The pipeline step kind `rollout`: checked when the file loads, runs a gated roll-out to a
(simulated) fleet, and puts the outcome with its numbers in the run report."""

from __future__ import annotations

import pytest

from slmops.fleet import mqtt, oci
from slmops.fleet.simulator import Simulator, parse_fault
from slmops.models.store import ModelStore
from slmops.pipeline import GateFailed, parse_spec, run_pipeline
from slmops.pipeline.spec import PipelineSpecError
from tests.fleet_helpers import add_tiny

PIPE = """\
name: ship
steps:
  ship:
    kind: rollout
    fleet: {fleet}
    model: {model}
    broker: {broker}
    waves: "50%,100%"
    bake: 1.5s
    gate: probe_score >= baseline.probe_score - 5
"""


def test_rollout_settings_are_checked_when_the_file_loads():
    text = PIPE.format(fleet="f", model="m:1", broker="mqtt://127.0.0.1:1").replace('"50%,100%"', '"1,50%"')
    text = text.replace("probe_score >= baseline", "latency >= baseline") + "    bogus: 1\n"
    with pytest.raises(PipelineSpecError) as info:
        parse_spec(text, "p.yaml")
    msg = str(info.value)
    assert "steps.ship.bogus: Extra inputs are not permitted" in msg
    text = PIPE.format(fleet="f", model="m:1", broker="mqtt://127.0.0.1:1").replace('"50%,100%"', '"1,50%"')
    with pytest.raises(PipelineSpecError, match="does not end at 100%"):
        parse_spec(text, "p.yaml")


@pytest.mark.parametrize("faulty", [False, True])
def test_pipeline_rollout_step_succeeds_or_rolls_back(tmp_path, mosquitto, registry, tiny_model_dir, faulty):
    store = ModelStore(tmp_path / "home")
    add_tiny(store, tiny_model_dir)
    pushed = oci.push(store, "tiny:1", oci.parse_oci(f"oci://{registry}/ro-pipe/tiny:v{int(faulty)}"))
    fleet = f"ro-pipe-{int(faulty)}"
    faults = [parse_fault(f"probe:-20/{pushed.digest}")] if faulty else []
    sim = Simulator(mqtt.parse_broker(mosquitto), fleet, 6, faults=faults, report_interval=0.4,
                    download_s=(0.1, 0.3), probe_s=0.1).start().run_in_thread()
    try:
        spec = parse_spec(PIPE.format(fleet=fleet, model=str(pushed.reference), broker=mosquitto), "ship.yaml")
        if not faulty:
            run = run_pipeline(spec, store=store, report_dir=tmp_path / "report")
            out = run.steps["ship"].outputs
            assert run.status == "succeeded" and out["status"] == "succeeded" and out["waves_passed"] == 2
            assert out["digest"] == pushed.digest and out["touched"] == 6
        else:
            with pytest.raises(GateFailed, match="rolled back: wave 1/2: gate failed"):
                run_pipeline(spec, store=store, report_dir=tmp_path / "report")
            from slmops.pipeline import list_runs

            run = list_runs(store)[-1]
            out = run.steps["ship"].outputs
            assert run.status == "gate-failed" and out["status"] == "failed" and out["wave_values"]["probe_score"] < 70
        assert (tmp_path / "report" / "report.md").exists()
        assert "ship" in (tmp_path / "report" / "report.md").read_text()
    finally:
        sim.close()
