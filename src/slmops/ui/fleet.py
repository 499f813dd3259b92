"""The Fleet page's data: devices from the broker (a live :class:`~slmops.fleet.view.FleetView`
per fleet, kept open while the console runs) and roll-outs from their records in the store
home, changed only through :mod:`slmops.fleet.rollouts` (pause, resume, abort, rollback)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError

ACTIONS = ("pause", "resume", "abort", "rollback")


@dataclass
class WaveRow:
    index: int  # 1-based
    devices: list[str]
    state: str  # done | current | pending
    gate: dict[str, Any] | None


def short(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{hexpart[:12]}" if hexpart else digest[:12]


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


class FleetWatch:
    def __init__(self, home: Path, broker: str | None = None, fleets: tuple[str, ...] = ()) -> None:
        self.home, self.broker_url, self.fleets = home, broker, fleets
        self._views: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- where ----------------------------------------------------------------------------
    def broker(self) -> Any | None:
        from slmops.fleet import rollouts

        try:
            return rollouts.find_broker(self.broker_url, self.home)
        except SlmopsError:
            return None

    def rollout_store(self) -> Any:
        from slmops.fleet.rollstore import RolloutStore

        return RolloutStore(self.home)

    def names(self) -> list[str]:
        return sorted(set(self.fleets) | {r.fleet for r in self.rollout_store().list()})

    # -- devices --------------------------------------------------------------------------
    def devices(self, fleet: str) -> tuple[dict[str, Any], str | None]:
        """(device id -> view, why not): the fleet's devices as the broker last told them."""
        from slmops.fleet.view import FleetView

        broker = self.broker()
        if broker is None:
            return {}, "no MQTT broker: start the console with --broker mqtt://HOST:PORT (or set SLMOPS_BROKER)"
        with self._lock:
            view = self._views.get(fleet)
            if view is None:
                try:
                    view = FleetView(broker, fleet, keep_windows=10_000).start()
                except SlmopsError as exc:
                    return {}, str(exc)
                self._views[fleet] = view
                view.wait_synced(timeout=3.0)
        if not view.connected:
            return view.devices(), f"not connected to the broker at {broker.url} (showing the last known state)"
        return view.devices(), None

    def close(self) -> None:
        with self._lock:
            for view in self._views.values():
                view.close()
            self._views.clear()

    # -- roll-outs ------------------------------------------------------------------------
    def rollouts(self, fleet: str | None = None) -> list[Any]:
        return list(reversed(self.rollout_store().list(fleet)))

    def rollout(self, rollout_id: str) -> Any:
        return self.rollout_store().load(rollout_id)

    def act(self, rollout_id: str, action: str) -> Any:
        from slmops.fleet import rollouts

        if action not in ACTIONS:
            raise SlmopsError(f"Unknown roll-out action {action!r}.", f"Use one of: {', '.join(ACTIONS)}.")
        if action in ("pause", "abort"):
            return getattr(rollouts, action)(self.home, rollout_id)
        broker = self.broker()
        if broker is None:
            raise SlmopsError(f"{action} needs the MQTT broker.", "Start the console with --broker mqtt://HOST:PORT.")
        return getattr(rollouts, action)(self.home, rollout_id, broker)


def waves(rec: Any) -> list[WaveRow]:
    out = []
    gates = {g.get("wave"): g for g in rec.gates}
    for i in range(len(rec.cuts)):
        if rec.status == "succeeded" or i < rec.wave:
            state = "done"
        elif i == rec.wave and not rec.done:
            state = "current"
        else:
            state = "pending" if i > rec.wave else ("done" if gates.get(i + 1) else "stopped")
        out.append(WaveRow(i + 1, rec.wave_devices(i), state, gates.get(i + 1)))
    return out


def allowed(rec: Any) -> list[str]:
    """The controls that make sense for the roll-out's status (the library re-checks)."""
    from slmops.fleet.rollstore import TERMINAL

    out = []
    if rec.status == "running":
        out.append("pause")
    if rec.status == "paused":
        out.append("resume")
    if rec.status not in TERMINAL:
        out.append("abort")
    if rec.status not in ("rolling_back", "rolled_back") and not (rec.status == "failed" and rec.finished_at):
        out.append("rollback")
    return out


def version_counts(devices: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dv in devices.values():
        key = short(dv.active_digest) if dv.active_digest else "(none)"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


GATE_KEYS = ("requests", "error_rate", "p50_ms", "p95_ms", "ttft_ms", "tokens_per_second", "memory_mb",
             "probe_score", "devices", "windows")
