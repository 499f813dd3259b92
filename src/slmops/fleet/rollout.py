"""The roll-out controller: a level-triggered reconcile loop over the fleet's MQTT state.

Every tick it reads the record (:mod:`slmops.fleet.rollstore`) and the fleet (desired, reported,
availability, telemetry), takes one step and writes the record back::

    assign    record each wave device's previous desired state (the intent) -> publish the new one
    activate  wait until the wave's devices report the new digest; offline, failed or late ones
              count against --max-unavailable
    bake      collect telemetry for --bake seconds, then evaluate the gate: wave vs baseline
              (devices still on the previous version in the same window), overall and per label
    passed -> next wave (or succeeded); failed -> rolling_back: every touched device gets its
              previous desired state back, then failed (with the numbers that failed it)

The intent is saved before anything is published, and every tick re-publishes a device's desired
state when what the broker holds differs from what the record says, so a controller killed at
any point and started again (``rollout resume``) neither loses nor repeats a step. The broker
going away stops the steps (timers are stretched by the outage and a bake restarts); a lease per
fleet keeps a second controller out.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from slmops.errors import SlmopsError
from slmops.fleet import mqtt
from slmops.fleet.gate import GateResult, aggregate, evaluate_gate, gate_names
from slmops.fleet.protocol import DesiredState, Telemetry
from slmops.fleet.rollstore import RolloutRecord, RolloutStore, Target, new_id
from slmops.fleet.view import DeviceView
from slmops.fleet.waves import (
    budget_for,
    cut_waves,
    matches,
    order_devices,
    parse_budget,
    parse_selector,
    parse_waves,
)


class FleetIO(Protocol):
    """What the controller needs from the fleet (:class:`slmops.fleet.view.FleetView` over MQTT)."""

    @property
    def connected(self) -> bool: ...

    def devices(self) -> dict[str, DeviceView]: ...

    def windows_since(self, since: float) -> list[Telemetry]: ...

    def publish_desired(self, states: dict[str, DesiredState | None]) -> None: ...


def parse_duration(text: str | float | int, what: str = "--bake") -> float:
    """``120``, ``120s``, ``2m``, ``1h`` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().lower()
    factor = 1.0
    for suffix, f in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if s.endswith(suffix):
            s, factor = s[: -len(suffix)], f
            break
    try:
        value = float(s) * factor
    except ValueError:
        raise SlmopsError(f"{what}: cannot read {text!r}.",
                          hint="Write seconds (120 or 120s), minutes (2m) or hours (1h).") from None
    if value < 0:
        raise SlmopsError(f"{what} must not be negative (got {text!r}).")
    return value


# -- creating a roll-out (everything checked before anything changes) -----------------------
def plan(fleet: str, target: Target, devices: dict[str, DeviceView], *, waves: str, bake_s: float, gate: str,
         select: str | dict[str, str] | None = None, max_unavailable: str = "10%", on_missing_data: str = "fail",
         activate_timeout_s: float = 300.0, report_interval_s: float | None = None, per_label: bool = True,
         rollout_id: str | None = None) -> RolloutRecord:
    """A new roll-out record over the devices seen now, or a :class:`SlmopsError` naming what is wrong."""
    steps = parse_waves(waves)
    gate_names(gate)
    parse_budget(max_unavailable)
    if on_missing_data not in ("fail", "continue"):
        raise SlmopsError(f"--on-missing-data must be fail or continue (got {on_missing_data!r}).")
    selector = parse_selector(select)
    eligible = {d: dv for d, dv in devices.items() if matches(dv.labels, selector)}
    if not eligible:
        what = f" matching --select {','.join(f'{k}={v}' for k, v in selector.items())}" if selector else ""
        raise SlmopsError(f"fleet {fleet!r} has no devices{what} ({len(devices)} device(s) reported in all).",
                          hint="Check `slmops fleet devices --fleet NAME` and the labels the agents were started with.")
    intervals = [float(getattr(dv.state, "report_interval_s", None) or 0) for dv in eligible.values()]
    interval = max([*intervals, report_interval_s or 0.0]) or 10.0
    if bake_s < interval:
        raise SlmopsError(f"--bake {bake_s:g}s is shorter than the devices' report interval ({interval:g}s): "
                          "the gate would see no telemetry.", hint=f"Use --bake {max(2 * interval, 1):g}s or more.")
    rid = rollout_id or new_id()
    online = [d for d, dv in eligible.items() if dv.online is not False]
    order = order_devices(rid, {d: dv.labels for d, dv in eligible.items()}, first=online)
    cuts = []
    n = 0
    for wave in cut_waves(order, steps):
        n += len(wave)
        cuts.append(n)
    return RolloutRecord(
        id=rid, fleet=fleet, target=target, waves=[str(s) for s in steps], bake_s=bake_s, gate=gate,
        select=selector, max_unavailable=str(max_unavailable), on_missing_data=on_missing_data,  # type: ignore[arg-type]
        activate_timeout_s=activate_timeout_s, report_interval_s=interval, per_label=per_label,
        order=order, labels={d: eligible[d].labels for d in order}, cuts=cuts,
    )


def rollback_desired(rec: RolloutRecord, device: str, now: float) -> DesiredState | None:
    """The desired state that puts ``device`` back where it was before the roll-out (None: it had none)."""
    prev = rec.previous.get(device)
    if prev is None:
        return None
    return DesiredState(**{**prev, "generation": rec.generation[device] + 1, "issued_at": now})


# -- one step ---------------------------------------------------------------------------------
class Controller:
    """Drives one roll-out record one step at a time (no threads, no sleeps: :meth:`tick`)."""

    def __init__(self, store: RolloutStore, rollout_id: str, io: FleetIO,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.id, self.io, self.clock = store, rollout_id, io, clock
        self.started = clock()  # telemetry is only seen from here on

    # the published desired states ------------------------------------------------------------
    def _new_desired(self, rec: RolloutRecord, device: str) -> DesiredState:
        t = rec.target
        return DesiredState(reference=t.reference, digest=t.digest, format=t.format,  # type: ignore[arg-type]
                            served_name=t.served_name, rollout=rec.id, generation=rec.generation[device],
                            issued_at=self.clock())

    def _rollback_desired(self, rec: RolloutRecord, device: str) -> DesiredState | None:
        return rollback_desired(rec, device, self.clock())

    @staticmethod
    def _holds(dv: DeviceView | None, want: DesiredState | None) -> bool:
        have = dv.desired if dv else None
        if want is None:
            return have is None
        return have is not None and have.digest == want.digest and have.generation >= want.generation

    def _ensure(self, rec: RolloutRecord, devices: dict[str, DeviceView],
                wanted: dict[str, DesiredState | None]) -> int:
        """Publish the desired states the broker does not hold yet (level-triggered)."""
        missing = {d: ds for d, ds in wanted.items() if not self._holds(devices.get(d), ds)}
        if missing:
            self.io.publish_desired(missing)
        return len(missing)

    # the step ------------------------------------------------------------------------------------
    def tick(self) -> RolloutRecord:
        """Read the record, take one step, save it; returns the record as saved."""
        with self.store.update(self.id) as rec:
            self._step(rec)
            return rec

    def _step(self, rec: RolloutRecord) -> None:
        now = self.clock()
        if not self.io.connected:
            if rec.broker_down_since is None:
                rec.broker_down_since = now
                rec.event("broker unreachable: roll-out waits", now)
            return
        if rec.broker_down_since is not None:
            outage = now - rec.broker_down_since
            rec.broker_down_since = None
            if rec.phase_started_at is not None:
                rec.phase_started_at += outage
            if rec.phase == "bake" and rec.status == "running":
                rec.bake_started_at = now
            rec.event(f"broker back after {outage:.0f}s: roll-out continues", now)
        try:
            if rec.status == "running":
                self._run(rec, now)
            elif rec.status == "rolling_back":
                self._rollback(rec, now)
        except mqtt.BrokerError as exc:
            rec.event(f"publish failed ({exc}); retrying", now)

    def _run(self, rec: RolloutRecord, now: float) -> None:
        devices = self.io.devices()
        wave = rec.wave_devices()
        label = f"wave {rec.wave + 1}/{len(rec.cuts)}"
        if rec.phase == "assign" and rec.wave == 0 and rec.last_baseline is None:
            # the old version's window before anything changes: the baseline once none are left on it
            if now - self.started < 1.5 * rec.report_interval_s:
                return
            before = [w for w in self.io.windows_since(now - max(rec.bake_s, 2 * rec.report_interval_s))
                      if w.device_id in rec.labels and w.digest != rec.target.digest]
            rec.last_baseline = aggregate(before) if before else {}
            rec.event(f"baseline before the roll-out: {len(before)} window(s) from "
                      f"{len({w.device_id for w in before})} device(s)", now)
        if rec.phase == "assign":
            for d in wave:  # the intent: recorded before anything is published
                if d not in rec.previous:
                    dv = devices.get(d)
                    prev = dv.desired if dv else None
                    rec.previous[d] = prev.model_dump() if prev else None
                    rec.generation[d] = (prev.generation if prev else 0) + 1
                    rec.touched.append(d)
            self.store.save(rec)
            self._ensure(rec, devices, {d: self._new_desired(rec, d) for d in wave})
            rec.phase, rec.phase_started_at, rec.unavailable = "activate", now, {}
            rec.event(f"{label}: desired state set on {len(wave)} device(s)", now)
            return
        # keep every touched device's desired state in place (a lost publish, a restart)
        self._ensure(rec, devices, {d: self._new_desired(rec, d) for d in rec.touched})
        if rec.phase == "activate":
            self._activate(rec, devices, wave, now, label)
        elif rec.phase == "bake":
            assert rec.bake_started_at is not None
            if now - rec.bake_started_at >= rec.bake_s:
                self._gate(rec, devices, now, label)

    def _activate(self, rec: RolloutRecord, devices: dict[str, DeviceView], wave: list[str], now: float,
                  label: str) -> None:
        digest = rec.target.digest
        pending, unavailable = [], {}
        for d in wave:
            dv = devices.get(d)
            st = dv.state if dv else None
            if st and st.active and st.active.digest == digest:
                continue
            if dv is not None and dv.online is False:
                unavailable[d] = "offline"
            elif st and st.status == "failed" and st.desired_digest == digest:
                unavailable[d] = f"failed: {st.reason or 'no reason given'}"
            else:
                pending.append(d)
        waited = now - (rec.phase_started_at or now)
        if pending and waited < rec.activate_timeout_s:
            return
        for d in pending:
            unavailable[d] = f"not active after {waited:.0f}s"
        rec.unavailable = unavailable
        budget = budget_for(parse_budget(rec.max_unavailable), len(wave))
        if len(unavailable) > budget:
            shown = "; ".join(f"{d}: {why}" for d, why in list(unavailable.items())[:5])
            more = f" (+{len(unavailable) - 5} more)" if len(unavailable) > 5 else ""
            self._fail(rec, f"{label}: {len(unavailable)} of {len(wave)} device(s) unavailable, more than "
                            f"--max-unavailable {rec.max_unavailable} ({budget}): {shown}{more}", now)
            return
        rec.phase, rec.bake_started_at = "bake", now
        rec.event(f"{label}: {len(wave) - len(unavailable)}/{len(wave)} active"
                  + (f", {len(unavailable)} unavailable within budget" if unavailable else "") + "; baking", now)

    def _gate(self, rec: RolloutRecord, devices: dict[str, DeviceView], now: float, label: str) -> None:
        assert rec.bake_started_at is not None
        digest = rec.target.digest
        touched = set(rec.touched)
        windows = self.io.windows_since(rec.bake_started_at)
        wave_ws = [w for w in windows if w.device_id in touched and w.digest == digest]
        base_ws = [w for w in windows
                   if w.device_id in rec.labels and w.device_id not in touched and w.digest != digest]
        wave_agg = aggregate(wave_ws)
        base_agg = aggregate(base_ws) if base_ws else (rec.last_baseline or None)
        if base_ws:
            rec.last_baseline = base_agg
        results = [evaluate_gate(rec.gate, wave_agg, base_agg, "wave")]
        if rec.per_label:
            results += self._per_label(rec, wave_ws, base_ws, base_agg)
        failed = [r for r in results if not r.passed and not (r.missing and r.group != "wave")]
        record = {"wave": rec.wave + 1, "at": now, "passed": not failed, "results": [r.to_dict() for r in results],
                  "wave_values": wave_agg, "baseline_values": base_agg}
        missing_only = bool(failed) and all(r.missing for r in failed)
        if missing_only and rec.on_missing_data == "continue":
            record["passed"] = True
            record["note"] = "missing data ignored (--on-missing-data continue)"
            failed = []
        rec.gates.append(record)
        if failed:
            r = failed[0]
            why = (f"no value for {', '.join(r.missing)} (no telemetry from the wave or the baseline); "
                   "failing safe" if r.missing else "")
            group = "" if r.group == "wave" else f" on devices with {r.group}"
            also = [x.group for x in failed[1:]]
            more = f"; also failed on {', '.join(also)}" if also else ""
            self._fail(rec, f"{label}: gate failed{group}: {r.evaluated}" + (f" ({why})" if why else "") + more, now)
            return
        rec.event(f"{label}: gate passed: {results[0].evaluated}", now)
        if rec.wave + 1 >= len(rec.cuts):
            rec.status, rec.phase, rec.finished_at = "succeeded", "done", now
            rec.event("roll-out succeeded", now)
        else:
            rec.wave, rec.phase, rec.phase_started_at, rec.bake_started_at = rec.wave + 1, "assign", now, None

    def _per_label(self, rec: RolloutRecord, wave_ws: list[Telemetry], base_ws: list[Telemetry],
                   base_agg: dict[str, Any] | None) -> list[GateResult]:
        groups: dict[tuple[str, str], list[Telemetry]] = defaultdict(list)
        base_groups: dict[tuple[str, str], list[Telemetry]] = defaultdict(list)
        for w in wave_ws:
            for kv in rec.labels.get(w.device_id, {}).items():
                groups[kv].append(w)
        for w in base_ws:
            for kv in rec.labels.get(w.device_id, {}).items():
                base_groups[kv].append(w)
        values_by_key: dict[str, set[str]] = defaultdict(set)
        for labels in rec.labels.values():
            for k, v in labels.items():
                values_by_key[k].add(v)
        out = []
        for (k, v), ws in sorted(groups.items()):
            if len(values_by_key[k]) < 2:
                continue  # a label every device shares says nothing the whole wave does not
            base = aggregate(base_groups[(k, v)]) if base_groups.get((k, v)) else base_agg
            out.append(evaluate_gate(rec.gate, aggregate(ws), base, f"{k}={v}"))
        return out

    def _fail(self, rec: RolloutRecord, reason: str, now: float) -> None:
        rec.reason = reason
        rec.event(f"failed: {reason}; rolling back {len(rec.touched)} device(s)", now)
        self.start_rollback(rec, "failed", now)

    @staticmethod
    def start_rollback(rec: RolloutRecord, final: str, now: float) -> None:
        rec.status, rec.final_status, rec.rollback_started_at = "rolling_back", final, now  # type: ignore[assignment]
        rec.phase_started_at = now

    def _rollback(self, rec: RolloutRecord, now: float) -> None:
        devices = self.io.devices()
        wanted = {d: self._rollback_desired(rec, d) for d in rec.touched}
        self._ensure(rec, devices, wanted)
        waiting = []
        for d, ds in wanted.items():
            dv = devices.get(d)
            if ds is None or dv is None or dv.online is False:
                continue  # nothing to go back to, or it gets the old version when it returns
            if dv.active_digest != ds.digest and not (dv.state and dv.state.status == "failed"):
                waiting.append(d)
        waited = now - (rec.phase_started_at or now)
        if waiting and waited < rec.activate_timeout_s:
            return
        rec.status = rec.final_status or "rolled_back"
        rec.phase, rec.finished_at = "done", now
        rec.event(f"rolled back {len(rec.touched) - len(waiting)}/{len(rec.touched)} device(s) in {waited:.1f}s"
                  + (f"; {len(waiting)} did not confirm" if waiting else ""), now)


# -- the controller process ---------------------------------------------------------------------
def run_controller(store: RolloutStore, rollout_id: str, io: FleetIO, *, tick_s: float = 0.5,
                   stop: threading.Event | None = None, on_tick: Callable[[RolloutRecord], None] | None = None,
                   token: str | None = None) -> RolloutRecord:
    """Hold the fleet's lease and tick until the roll-out ends, is paused or aborted (or ``stop``)."""
    rec = store.load(rollout_id)
    token = token or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    store.acquire(rec.fleet, rec.id, token)
    ctl = Controller(store, rollout_id, io)
    try:
        with store.update(rollout_id) as rec:
            now = time.time()
            if rec.status == "running" and rec.phase == "bake":
                rec.bake_started_at = now  # the telemetry of the earlier bake left with the old process
            rec.event(f"controller started (pid {os.getpid()})", now)
        last_renew = time.monotonic()
        while True:
            rec = ctl.tick()
            if on_tick:
                on_tick(rec)
            if rec.status not in ("running", "rolling_back") or (stop is not None and stop.is_set()):
                return rec
            if time.monotonic() - last_renew > 2.0:
                store.acquire(rec.fleet, rec.id, token)
                last_renew = time.monotonic()
            time.sleep(tick_s)
    finally:
        store.release(rec.fleet, token)
