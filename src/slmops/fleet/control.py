"""The operator's side of the protocol: set devices' desired state (``fleet assign``) and read
what every device reports (``fleet devices``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from slmops.errors import SlmopsError
from slmops.fleet import mqtt, protocol
from slmops.fleet.protocol import DesiredState, ReportedState, Telemetry


@dataclass
class Device:
    device_id: str
    state: ReportedState | None = None
    desired: DesiredState | None = None
    online: bool | None = None
    telemetry: Telemetry | None = None
    problems: list[str] = field(default_factory=list)  # malformed messages seen for this device

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.state.labels) if self.state else {}

    def to_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "device_id": self.device_id,
            "labels": self.labels,
            "online": self.online,
            "status": s.status if s else None,
            "reason": s.reason if s else None,
            "active_digest": s.active.digest if s and s.active else None,
            "active_ref": s.active.store_ref if s and s.active else None,
            "desired_digest": self.desired.digest if self.desired else None,
            "desired_generation": self.desired.generation if self.desired else None,
            "rollout": (self.desired.rollout if self.desired else None) or (s.rollout if s else None),
            "last_seen": s.updated_at if s else None,
            "port": s.port if s else None,
            "free_disk_bytes": s.free_disk_bytes if s else None,
            "telemetry": self.telemetry.model_dump() if self.telemetry else None,
            "problems": self.problems,
        }


def devices(broker: mqtt.Broker, fleet: str, *, wait_s: float = 0.0, timeout: float = 10.0) -> list[Device]:
    """Every device of ``fleet`` from the retained state/desired/availability topics; with
    ``wait_s`` also listens that long for telemetry windows (not retained)."""
    found: dict[str, Device] = {}
    lock = threading.Lock()
    last = [time.monotonic()]
    subscribed = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        last[0] = time.monotonic()
        try:
            _, device_id, leaf = protocol.split_topic(topic)
        except protocol.ProtocolError:
            return
        with lock:
            dev = found.setdefault(device_id, Device(device_id))
            try:
                if leaf == "state" and payload:
                    dev.state = protocol.parse(ReportedState, topic, payload)
                elif leaf == "desired" and payload:
                    dev.desired = protocol.parse(DesiredState, topic, payload)
                elif leaf == "availability" and payload:
                    dev.online = payload.strip() == b"online"
                elif leaf == "telemetry":
                    dev.telemetry = protocol.parse(Telemetry, topic, payload)
            except protocol.ProtocolError as exc:
                dev.problems.append(str(exc))

    client = mqtt.connect(broker, timeout=timeout, on_message=on_message)
    try:
        client.on_subscribe = lambda *a: (last.__setitem__(0, time.monotonic()), subscribed.set())
        leaves = ("state", "desired", "availability", "telemetry")
        client.subscribe([(protocol.fleet_wildcard(fleet, leaf), 1) for leaf in leaves])
        if not subscribed.wait(timeout):
            raise mqtt.BrokerError("the broker did not acknowledge the subscription.")
        deadline = time.monotonic() + timeout
        while time.monotonic() - last[0] < 0.3 and time.monotonic() < deadline:
            time.sleep(0.02)
        if wait_s > 0:
            time.sleep(wait_s)
    finally:
        mqtt.close(client)
    with lock:
        return sorted((d for d in found.values() if d.state or d.desired), key=lambda d: d.device_id)


def parse_labels(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a clear error for anything else."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SlmopsError(f"invalid label {part!r}.", "Write labels as key=value,key2=value2.")
        out[key.strip()] = value.strip()
    return out


def select(found: list[Device], selector: dict[str, str]) -> list[str]:
    return [d.device_id for d in found if all(d.labels.get(k) == v for k, v in selector.items())]


def assign(
    broker: mqtt.Broker,
    fleet: str,
    device_ids: list[str],
    *,
    reference: str,
    digest: str,
    format: str,
    served_name: str,
    rollout: str | None = None,
    known: list[Device] | None = None,
) -> dict[str, DesiredState]:
    """Publish a retained desired state to each device; each device's generation grows by one."""
    if not device_ids:
        raise SlmopsError("no devices to assign to.", "Name them with --devices or match some with --select.")
    for d in device_ids:
        protocol.check_name("device", d)
    current = {d.device_id: d for d in (known if known is not None else devices(broker, fleet))}
    out: dict[str, DesiredState] = {}
    for device_id in device_ids:
        prev = current.get(device_id)
        generation = (prev.desired.generation + 1) if prev and prev.desired else 1
        out[device_id] = DesiredState(
            reference=reference,
            digest=digest,
            format=format,
            served_name=served_name,
            rollout=rollout,
            generation=generation,
        )  # type: ignore[arg-type]
    mqtt.publish_retained(broker, {protocol.desired_topic(fleet, d): s.to_payload() for d, s in out.items()})
    return out
