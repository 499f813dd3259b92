"""Where roll-outs live: one JSON record per roll-out under ``$SLMOPS_HOME/fleet/rollouts/``,
written atomically under a per-roll-out file lock, plus one lease per fleet so that only one
controller drives a fleet at a time.

The record is the controller's whole memory: a controller killed anywhere reads it back and
continues (see :mod:`slmops.fleet.rollout`). The CLI's ``pause``/``abort``/``rollback`` change
the record under the same lock; the running controller sees the change on its next tick.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.errors import SlmopsError
from slmops.models.store import default_home
from slmops.processes import pid_alive

Status = Literal["running", "paused", "succeeded", "failed", "aborted", "rolling_back", "rolled_back"]
Phase = Literal["assign", "activate", "bake", "done"]
TERMINAL = ("succeeded", "failed", "aborted", "rolled_back")
LEASE_TTL_S = 15.0


class Target(BaseModel):
    """The version being rolled out, resolved: what goes into every device's desired state."""

    model_config = ConfigDict(extra="forbid")
    reference: str
    digest: str
    format: str
    served_name: str
    source: str = ""  # what the user typed (a store ref or oci://...)


class RolloutRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    fleet: str
    target: Target
    waves: list[str]
    bake_s: float
    gate: str
    select: dict[str, str] = Field(default_factory=dict)
    max_unavailable: str = "10%"
    on_missing_data: Literal["fail", "continue"] = "fail"
    activate_timeout_s: float = 300.0
    report_interval_s: float = 10.0
    per_label: bool = True
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    # the plan, fixed at creation: devices in order, cumulative cut after each wave
    order: list[str] = Field(default_factory=list)
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    cuts: list[int] = Field(default_factory=list)

    # progress
    status: Status = "running"
    final_status: Status | None = None  # where a roll-back ends: failed (gate) or rolled_back (asked)
    wave: int = 0
    phase: Phase = "assign"
    phase_started_at: float | None = None
    bake_started_at: float | None = None
    previous: dict[str, dict[str, Any] | None] = Field(default_factory=dict)  # device -> DesiredState dump
    generation: dict[str, int] = Field(default_factory=dict)  # device -> generation of our desired state
    touched: list[str] = Field(default_factory=list)
    unavailable: dict[str, str] = Field(default_factory=dict)  # this wave: device -> why
    gates: list[dict[str, Any]] = Field(default_factory=list)
    last_baseline: dict[str, Any] | None = None
    reason: str | None = None
    broker_down_since: float | None = None
    rollback_started_at: float | None = None
    finished_at: float | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)

    def wave_devices(self, index: int | None = None) -> list[str]:
        i = self.wave if index is None else index
        start = self.cuts[i - 1] if i > 0 else 0
        return self.order[start:self.cuts[i]]

    def event(self, text: str, at: float | None = None) -> None:
        self.events.append({"at": at or time.time(), "text": text})
        del self.events[:-200]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def summary(self) -> dict[str, Any]:
        last_gate = self.gates[-1] if self.gates else None
        return {
            "id": self.id, "fleet": self.fleet, "status": self.status,
            "model": self.target.source or self.target.reference,
            "digest": self.target.digest, "wave": self.wave + 1, "waves": len(self.cuts), "phase": self.phase,
            "devices": len(self.order), "touched": len(self.touched), "reason": self.reason,
            "last_gate": last_gate, "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }


def new_id() -> str:
    return time.strftime("ro-%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class LeaseHeld(SlmopsError):
    """Another live controller drives this fleet."""


class RolloutStore:
    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self.dir = self.home / "fleet" / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------------------
    def path(self, rollout_id: str) -> Path:
        if not rollout_id or "/" in rollout_id or rollout_id.startswith("."):
            raise SlmopsError(f"invalid roll-out id {rollout_id!r}.")
        return self.dir / f"{rollout_id}.json"

    def _lock(self, rollout_id: str) -> FileLock:
        return FileLock(str(self.dir / f".{rollout_id}.lock"), timeout=30)

    def save(self, rec: RolloutRecord) -> None:
        rec.updated_at = time.time()
        path = self.path(rec.id)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w") as fh:
            fh.write(rec.model_dump_json(indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, rollout_id: str) -> RolloutRecord:
        path = self.path(rollout_id)
        if not path.exists():
            known = ", ".join(r.id for r in self.list()[-5:]) or "none yet"
            raise SlmopsError(f"no roll-out {rollout_id!r} in {self.dir}.", hint=f"Recent roll-outs: {known}.")
        try:
            return RolloutRecord.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise SlmopsError(f"{path} is not a valid roll-out record: {exc.errors()[0]['msg']}.") from None

    @contextlib.contextmanager
    def update(self, rollout_id: str) -> Iterator[RolloutRecord]:
        """Read-modify-write one record under its lock (saved when the block exits cleanly)."""
        with self._lock(rollout_id):
            rec = self.load(rollout_id)
            yield rec
            self.save(rec)

    def create(self, rec: RolloutRecord) -> None:
        with self._lock(rec.id):
            if self.path(rec.id).exists():
                raise SlmopsError(f"roll-out {rec.id} already exists.")
            self.save(rec)

    def list(self, fleet: str | None = None) -> list[RolloutRecord]:
        out = []
        for p in sorted(self.dir.glob("ro-*.json")):
            with contextlib.suppress(ValueError, OSError):
                rec = RolloutRecord.model_validate_json(p.read_text())
                if fleet is None or rec.fleet == fleet:
                    out.append(rec)
        out.sort(key=lambda r: r.created_at)
        return out

    def latest(self, fleet: str) -> RolloutRecord:
        recs = self.list(fleet)
        if not recs:
            raise SlmopsError(f"fleet {fleet!r} has no roll-outs yet.", hint="Start one with `slmops rollout start`.")
        return recs[-1]

    def active(self, fleet: str) -> list[RolloutRecord]:
        return [r for r in self.list(fleet) if not r.done]

    # -- the per-fleet lease -----------------------------------------------------------------
    def _lease_path(self, fleet: str) -> Path:
        return self.dir / f"{fleet}.lease.json"

    def lease_holder(self, fleet: str) -> dict[str, Any] | None:
        """The live lease on ``fleet`` (None when free, expired or held by a dead process here)."""
        path = self._lease_path(fleet)
        try:
            lease = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if lease.get("expires_at", 0) < time.time():
            return None
        if lease.get("host") == socket.gethostname() and not pid_alive(int(lease.get("pid", 0))):
            return None
        return lease

    def acquire(self, fleet: str, rollout_id: str, token: str, ttl: float = LEASE_TTL_S) -> None:
        """Take or renew the fleet's lease; :class:`LeaseHeld` when another live controller has it."""
        with FileLock(str(self.dir / f".{fleet}.lease.lock"), timeout=30):
            held = self.lease_holder(fleet)
            if held and held.get("token") != token:
                raise LeaseHeld(
                    f"fleet {fleet!r} is already driven by a controller (pid {held.get('pid')} on "
                    f"{held.get('host')}, roll-out {held.get('rollout')}).",
                    hint="Wait for it, or `slmops rollout pause/abort` that roll-out first.",
                )
            lease = {"fleet": fleet, "rollout": rollout_id, "token": token, "pid": os.getpid(),
                     "host": socket.gethostname(), "expires_at": time.time() + ttl}
            path = self._lease_path(fleet)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(lease))
            os.replace(tmp, path)

    def release(self, fleet: str, token: str) -> None:
        with FileLock(str(self.dir / f".{fleet}.lease.lock"), timeout=30):
            path = self._lease_path(fleet)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("token") == token:
                    path.unlink()
