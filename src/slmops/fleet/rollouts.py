"""Roll-outs as the CLI and the pipeline use them: resolve the model, plan and record the
roll-out, start the controller as its own process, and change a running one (pause, resume,
abort, rollback). The controller itself is :mod:`slmops.fleet.rollout`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from slmops.configs import CommandConfig
from slmops.errors import CheckFailed, SlmopsError
from slmops.fleet import addresses, mqtt, oci
from slmops.fleet.rollout import plan, run_controller
from slmops.fleet.rollstore import TERMINAL, LeaseHeld, RolloutRecord, RolloutStore, Target
from slmops.fleet.view import DeviceView, FleetView, snapshot
from slmops.models.store import ModelStore


# -- where the broker and the registry are (one rule for every fleet command) ----------------
def find_broker(explicit: str | None, home: Path) -> mqtt.Broker:
    """``--broker``, else ``$SLMOPS_BROKER``, else what ``slmops fleet up`` recorded."""
    return addresses.broker(explicit, home=home)


def find_registry(explicit: str | None, home: Path) -> str | None:
    return addresses.registry(explicit, home=home)


# -- the model ------------------------------------------------------------------------------
def resolve_target(model: str, *, store: ModelStore, registry: str | None, served_name: str,
                   trust: Path | None = None, progress: Any = None) -> Target:
    """An ``oci://`` reference is resolved to its digest (the manifest must be an slmops model);
    a store reference is pushed first to ``REGISTRY/NAME:vVERSION``."""
    if oci.is_oci(model):
        ref = oci.parse_oci(model, default_registry=registry)
        art = oci.resolve(oci.Client(ref.registry), ref, trust=trust)
        return Target(reference=str(art.reference), digest=art.digest, format=str(art.config.get("format")),
                      served_name=served_name, source=model)
    from slmops.fleet.publish import publish

    store.get(model)  # ModelNotFoundError names the fix before the registry is asked
    if not registry:
        raise SlmopsError(f"{model} is a store model; pushing it needs a registry.",
                          hint="Pass --registry HOST:PORT, set SLMOPS_REGISTRY, or start one with `slmops fleet up`.")
    pub = publish(store, model, registry=registry)  # the same repository `fleet assign` pushes to
    return Target(reference=pub.reference, digest=pub.digest, format=pub.format, served_name=served_name,
                  source=model)


def served_name_of(devices: dict[str, DeviceView], fleet: str) -> str:
    """The fleet's public model name: what its devices are told to serve now, else the fleet name."""
    names = [dv.desired.served_name for dv in devices.values() if dv.desired]
    return max(set(names), key=names.count) if names else fleet


# -- start / resume ------------------------------------------------------------------------
def start(*, store: ModelStore, broker: mqtt.Broker, fleet: str, model: str, waves: str, bake_s: float, gate: str,
          select: str | None = None, max_unavailable: str = "10%", on_missing_data: str = "fail",
          activate_timeout_s: float = 300.0, report_interval_s: float | None = None, per_label: bool = True,
          registry: str | None = None, served_name: str | None = None, trust: Path | None = None,
          spawn: bool = True, progress: Any = None) -> RolloutRecord:
    """Check everything, record the roll-out, start its controller (unless ``spawn=False``)."""
    rstore = RolloutStore(store.home)
    busy = rstore.active(fleet)
    if busy:
        raise SlmopsError(f"fleet {fleet!r} already has a roll-out under way: {busy[-1].id} ({busy[-1].status}).",
                          hint=f"Wait for it, or `slmops rollout abort {busy[-1].id}`.")
    held = rstore.lease_holder(fleet)
    if held:
        raise LeaseHeld(f"fleet {fleet!r} is driven by a controller (pid {held.get('pid')}, roll-out "
                        f"{held.get('rollout')}).", hint="Wait for it to finish or abort that roll-out.")
    devices = snapshot(broker, fleet)
    name = served_name or served_name_of(devices, fleet)
    # cheap checks first: nothing is pushed for a roll-out that cannot start
    plan(fleet, Target(reference="-", digest="sha256:" + "0" * 64, format="hf", served_name=name), devices,
         waves=waves, bake_s=bake_s, gate=gate, select=select, max_unavailable=max_unavailable,
         on_missing_data=on_missing_data, report_interval_s=report_interval_s)
    target = resolve_target(model, store=store, registry=registry, served_name=name, trust=trust, progress=progress)
    rec = plan(fleet, target, devices, waves=waves, bake_s=bake_s, gate=gate, select=select,
               max_unavailable=max_unavailable, on_missing_data=on_missing_data,
               activate_timeout_s=activate_timeout_s, report_interval_s=report_interval_s, per_label=per_label)
    rec.event(f"created: {target.source or target.reference} ({target.digest[:19]}) to {len(rec.order)} device(s) "
              f"in {len(rec.cuts)} wave(s) {[n for n in rec.cuts]}")
    rstore.create(rec)
    if spawn:
        proc = spawn_controller(store.home, rec.id, broker)
        wait_under_way(store.home, rec, proc)
    return rec


def wait_under_way(home: Path, rec: RolloutRecord, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Return once the controller holds the fleet's lease; its log's tail when it died first."""
    rstore = RolloutStore(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = rstore.lease_holder(rec.fleet)
        if held and held.get("rollout") == rec.id:
            return
        if proc.poll() is not None:
            if rstore.load(rec.id).done:
                return  # it ran to the end already
            log = rstore.dir / f"{rec.id}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise SlmopsError(f"the controller of roll-out {rec.id} stopped at once (exit code {proc.returncode}): "
                              + (" | ".join(tail) or "no output"), hint=f"See {log}; `slmops rollout resume {rec.id}`.")
        time.sleep(0.1)


def spawn_controller(home: Path, rollout_id: str, broker: mqtt.Broker) -> subprocess.Popen:
    """Start ``slmops rollout resume ID --foreground`` as its own detached process; its output goes
    to ``fleet/rollouts/ID.log``. The broker password travels in the environment, never in argv."""
    rstore = RolloutStore(home)
    log = open(rstore.dir / f"{rollout_id}.log", "ab")  # noqa: SIM115 (handed to the child)
    env = {**os.environ, "SLMOPS_HOME": str(home)}
    if broker.password:
        env["SLMOPS_BROKER_PASSWORD"] = broker.password
    if broker.username:
        env["SLMOPS_BROKER_USERNAME"] = broker.username
    if broker.ca_file:
        env["SLMOPS_BROKER_CA"] = broker.ca_file
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmops", "rollout", "resume", rollout_id, "--foreground", "--broker", broker.url],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    log.close()
    return proc


def drive(home: Path, rollout_id: str, broker: mqtt.Broker, *, tick_s: float = 0.5, stop: Any = None,
          on_tick: Any = None) -> RolloutRecord:
    """Run the controller in this process until the roll-out ends, pauses or is aborted."""
    rstore = RolloutStore(home)
    rec = rstore.load(rollout_id)
    held = rstore.lease_holder(rec.fleet)
    if held:
        raise LeaseHeld(f"fleet {rec.fleet!r} is already driven by a controller (pid {held.get('pid')}, "
                        f"roll-out {held.get('rollout')}).", hint="Only one controller drives a fleet at a time.")
    view = FleetView(broker, rec.fleet).start()
    try:
        view.wait_synced(timeout=30)  # without a broker the controller waits in its loop
        return run_controller(rstore, rollout_id, view, tick_s=tick_s, stop=stop, on_tick=on_tick)
    finally:
        view.close()


# -- changing a roll-out ---------------------------------------------------------------------
def _find(rstore: RolloutStore, rollout_id: str | None, fleet: str | None) -> str:
    if rollout_id:
        return rollout_id
    if fleet:
        return rstore.latest(fleet).id
    recs = rstore.list()
    if not recs:
        raise SlmopsError("there are no roll-outs yet.", hint="Start one with `slmops rollout start`.")
    return recs[-1].id


def pause(home: Path, rollout_id: str) -> RolloutRecord:
    with RolloutStore(home).update(rollout_id) as rec:
        if rec.status != "running":
            raise SlmopsError(f"roll-out {rollout_id} is {rec.status}; only a running roll-out can be paused.")
        rec.status = "paused"
        rec.event("paused")
    return rec


def resume(home: Path, rollout_id: str, broker: mqtt.Broker, *, spawn: bool = True) -> RolloutRecord:
    """Paused -> running; then make sure a controller drives it (started here unless one is alive)."""
    rstore = RolloutStore(home)
    with rstore.update(rollout_id) as rec:
        if rec.status in TERMINAL:
            raise SlmopsError(f"roll-out {rollout_id} has ended ({rec.status}); start a new one instead.")
        if rec.status == "paused":
            rec.status = "running"
            rec.event("resumed")
            if rec.phase == "bake":
                rec.bake_started_at = time.time()
            if rec.phase == "activate":
                rec.phase_started_at = time.time()
    if spawn and not rstore.lease_holder(rec.fleet):
        wait_under_way(home, rec, spawn_controller(home, rollout_id, broker))
    return rec


def abort(home: Path, rollout_id: str, io: Any = None) -> RolloutRecord:
    """Stop where it is: devices already running the new version keep it; touched devices not on
    it yet (offline, still downloading) get their previous desired state back through ``io`` (a
    :class:`~slmops.fleet.view.FleetView`), so an aborted version reaches nobody new."""
    from slmops.fleet.rollout import rollback_desired

    with RolloutStore(home).update(rollout_id) as rec:
        if rec.status in TERMINAL:
            raise SlmopsError(f"roll-out {rollout_id} has already ended ({rec.status}).")
        now = time.time()
        back: dict[str, Any] = {}
        if io is not None and rec.touched:
            devices = io.devices()
            back = {d: rollback_desired(rec, d, now) for d in rec.touched
                    if (dv := devices.get(d)) is None or dv.active_digest != rec.target.digest}
            if back:
                io.publish_desired(back)
        rec.status, rec.phase, rec.finished_at = "aborted", "done", now
        rec.event(f"aborted: {len(rec.touched) - len(back)} device(s) keep the new version"
                  + (f", {len(back)} not on it yet go back" if back else ""), now)
    return rec


def rollback(home: Path, rollout_id: str, broker: mqtt.Broker, *, spawn: bool = True) -> RolloutRecord:
    """Every device the roll-out touched goes back to its previous desired state."""
    from slmops.fleet.rollout import Controller

    rstore = RolloutStore(home)
    with rstore.update(rollout_id) as rec:
        if rec.status in ("rolling_back", "rolled_back") or (rec.status == "failed" and rec.finished_at):
            raise SlmopsError(f"roll-out {rollout_id} is already {rec.status} (its devices went back).")
        Controller.start_rollback(rec, "rolled_back", time.time())
        rec.event(f"rollback asked: {len(rec.touched)} device(s) go back")
    if spawn and not rstore.lease_holder(rec.fleet):
        wait_under_way(home, rec, spawn_controller(home, rollout_id, broker))
    return rec


def find(home: Path, rollout_id: str | None = None, fleet: str | None = None) -> RolloutRecord:
    rstore = RolloutStore(home)
    return rstore.load(_find(rstore, rollout_id, fleet))


# -- fleet status -------------------------------------------------------------------------------
def fleet_status(home: Path, broker: mqtt.Broker, fleet: str) -> dict[str, Any]:
    devices = snapshot(broker, fleet)
    versions: dict[str, int] = {}
    offline = failed = 0
    for dv in devices.values():
        key = dv.active_digest or "(none)"
        versions[key] = versions.get(key, 0) + 1
        offline += dv.online is False
        failed += bool(dv.state and dv.state.status == "failed")
    rstore = RolloutStore(home)
    recs = rstore.list(fleet)
    running = [r for r in recs if not r.done]
    return {
        "fleet": fleet, "devices": len(devices), "online": len(devices) - offline, "offline": offline,
        "failed": failed, "versions": dict(sorted(versions.items(), key=lambda kv: -kv[1])),
        "rollouts": [r.summary() for r in running],
        "last_rollout": recs[-1].summary() if recs and recs[-1].done else None,
    }


# -- one config for `rollout start` and the pipeline's `rollout` step -----------------------------
class RolloutConfig(CommandConfig):
    """The keys of ``slmops rollout start`` (a pipeline ``rollout`` step takes the same)."""

    what: ClassVar[str] = "roll-out settings"
    example: ClassVar[str] = ("Example: slmops rollout start --fleet shops --model student:3 --waves 1,10%,50%,100% "
                              "--bake 2m --gate 'probe_score >= baseline.probe_score - 5'")

    fleet: str = Field(description="Fleet name.")
    model: str = Field(description="Store reference (pushed first) or oci://HOST/REPO:TAG|@sha256:...")
    gate: str = Field(description="Gate: the wave vs baseline.NAME, e.g. 'probe_score >= baseline.probe_score - 5'.")
    waves: str = Field("1,10%,50%,100%", description="Cumulative wave sizes, counts or percentages, ending at 100%.")
    bake: str | float = Field("120s", description="How long each wave bakes before its gate (120s, 2m).")
    select: str | None = Field(None, description="Only devices with these labels: k=v,k2=v2.")
    max_unavailable: str = Field("10%", description="Devices of a wave that may be offline/failed/late: N or P%.")
    on_missing_data: Literal["fail", "continue"] = Field("fail", description="No telemetry: fail or continue.")
    timeout: str | float = Field("300s", description="How long a wave's devices get to activate.")
    per_label: bool = Field(True, description="Also hold the gate for every label value of the wave.")
    report_interval: float | None = Field(None, description="Devices' telemetry interval if unreported.")
    served_name: str | None = Field(None, description="Public model name on the devices.")
    registry: str | None = Field(None, description="OCI registry HOST:PORT to push a store model to.")
    broker: str | None = Field(None, description="MQTT broker mqtt://HOST:PORT (default: $SLMOPS_BROKER, `fleet up`).")
    trust: Path | None = Field(None, description="Public key the artifact's signature must match.")

    def problems(self) -> list[str]:
        """Waves, gate, budget and durations: every mistake at once, before anything changes."""
        from slmops.fleet.gate import gate_names
        from slmops.fleet.rollout import parse_duration
        from slmops.fleet.waves import parse_budget, parse_selector, parse_waves

        out = []
        for check, value in ((parse_waves, self.waves), (gate_names, self.gate),
                             (parse_budget, self.max_unavailable), (parse_selector, self.select),
                             (lambda v: parse_duration(v, "bake"), self.bake),
                             (lambda v: parse_duration(v, "timeout"), self.timeout)):
            if isinstance(value, str) and "${" in value:
                continue
            try:
                check(value)
            except SlmopsError as exc:
                out.append(str(exc).rstrip("."))
        return out

    def start(self, *, store: ModelStore, spawn: bool = True, progress: Any = None) -> RolloutRecord:
        from slmops.fleet.rollout import parse_duration

        return start(store=store, broker=find_broker(self.broker, store.home), fleet=self.fleet, model=self.model,
                     waves=self.waves, bake_s=parse_duration(self.bake), gate=self.gate, select=self.select,
                     max_unavailable=self.max_unavailable, on_missing_data=self.on_missing_data,
                     activate_timeout_s=parse_duration(self.timeout, "timeout"),
                     report_interval_s=self.report_interval, per_label=self.per_label,
                     registry=find_registry(self.registry, store.home), served_name=self.served_name,
                     trust=self.trust, spawn=spawn, progress=progress)


class RolloutFailed(CheckFailed):
    """The roll-out ran and its gate (or its availability budget) failed it; its devices went back."""

    def __init__(self, rec: RolloutRecord) -> None:
        super().__init__(f"roll-out {rec.id} failed: {rec.reason}",
                         "Every device it touched is back on its previous version.")
        self.record = rec


def outputs(rec: RolloutRecord) -> dict[str, Any]:
    """A roll-out as a pipeline step's outputs (and the run report's numbers)."""
    last = rec.gates[-1] if rec.gates else {}
    first = (last.get("results") or [{}])[0]
    return {"rollout": rec.id, "status": rec.status, "fleet": rec.fleet, "digest": rec.target.digest,
            "reference": rec.target.reference, "devices": len(rec.order), "touched": len(rec.touched),
            "waves": len(rec.cuts), "waves_passed": sum(1 for g in rec.gates if g.get("passed")),
            "reason": rec.reason, "last_gate": first.get("evaluated"),
            "wave_values": last.get("wave_values"), "baseline_values": last.get("baseline_values")}


def run(config: RolloutConfig, *, store: ModelStore, progress: Any = None) -> RolloutRecord:
    """Start the roll-out and drive it in this process to its end (for the pipeline). A roll-out of
    the same model on this fleet that is still under way (a killed pipeline) is resumed instead.
    Raises :class:`RolloutFailed` when it failed."""
    broker = find_broker(config.broker, store.home)
    rstore = RolloutStore(store.home)
    same = [r for r in rstore.active(config.fleet) if r.target.source == config.model and r.status != "paused"]
    if same:
        rec = same[-1]
        if progress:
            progress(f"resuming roll-out {rec.id} of {config.model} on fleet {config.fleet}")
    else:
        rec = config.start(store=store, spawn=False, progress=progress)
        if progress:
            progress(f"roll-out {rec.id}: {len(rec.order)} device(s) in {len(rec.cuts)} wave(s) {rec.cuts}")
    seen = [len(rec.events)]

    def tell(r: RolloutRecord) -> None:
        if progress:
            for e in r.events[seen[0]:]:
                progress(e["text"])
        seen[0] = len(r.events)

    rec = drive(store.home, rec.id, broker, on_tick=tell)
    if rec.status == "failed":
        raise RolloutFailed(rec)
    return rec
