"""A live view of one fleet over MQTT: every device's reported state, desired state and
availability (all retained) plus a rolling buffer of telemetry windows, and the publishing of
desired states. The roll-out controller and ``fleet status`` read the fleet through it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slmops.fleet import mqtt, protocol
from slmops.fleet.protocol import DesiredState, ReportedState, Telemetry


@dataclass
class DeviceView:
    device_id: str
    state: ReportedState | None = None
    desired: DesiredState | None = None
    online: bool | None = None
    last_seen: float | None = None
    last_telemetry: Telemetry | None = None

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.state.labels) if self.state else {}

    @property
    def active_digest(self) -> str | None:
        return self.state.active.digest if self.state and self.state.active else None


class FleetView:
    """Subscribe to one fleet's device topics; safe to read from another thread."""

    def __init__(self, broker: mqtt.Broker, fleet: str, *, keep_windows: int = 200_000,
                 client_id: str | None = None) -> None:
        self.broker = broker
        self.fleet = protocol.check_name("fleet", fleet)
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceView] = {}
        self._windows: deque[Telemetry] = deque(maxlen=keep_windows)
        self._subscribed = threading.Event()
        self._last_msg = time.monotonic()
        self.malformed = 0
        self.client = mqtt.make_client(broker, client_id=client_id, on_connect=self._on_connect,
                                       on_message=self._on_message)
        self.client.max_inflight_messages_set(1000)
        self.client.on_subscribe = self._on_subscribe

    # -- connection ------------------------------------------------------------------------
    def start(self) -> FleetView:
        mqtt.start(self.client, self.broker)
        return self

    def close(self) -> None:
        mqtt.close(self.client)

    @property
    def connected(self) -> bool:
        """Connected, subscribed, and the retained burst after (re)subscribing has arrived: only
        then does the view say what the broker holds (a half-synced view would look like
        devices that vanished)."""
        return (self.client.connected_event.is_set() and self._subscribed.is_set()
                and time.monotonic() - self._last_msg >= 0.3)

    def _on_connect(self, client: Any) -> None:
        self._subscribed.clear()
        client.subscribe([(protocol.fleet_wildcard(self.fleet, leaf), 0)
                          for leaf in ("state", "desired", "availability", "telemetry")])

    def _on_subscribe(self, *args: Any) -> None:
        self._last_msg = time.monotonic()
        self._subscribed.set()

    def wait_synced(self, timeout: float = 10.0, quiet: float = 0.3) -> bool:
        """Wait for the subscription and then for the retained messages to stop arriving."""
        deadline = time.monotonic() + timeout
        if not self._subscribed.wait(timeout):
            return False
        while time.monotonic() - self._last_msg < quiet and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    # -- incoming --------------------------------------------------------------------------
    def _device(self, device_id: str) -> DeviceView:
        dv = self._devices.get(device_id)
        if dv is None:
            dv = self._devices[device_id] = DeviceView(device_id)
        return dv

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:  # live telemetry never stops; the retained burst after subscribing does
            self._last_msg = time.monotonic()
        try:
            _, device_id, leaf = protocol.split_topic(topic)
            now = time.time()
            with self._lock:
                if leaf == "availability":
                    self._device(device_id).online = payload.strip() == b"online" if payload else None
                elif leaf == "desired":
                    dv = self._device(device_id)
                    dv.desired = protocol.parse(DesiredState, topic, payload) if payload else None
                elif leaf == "state":
                    if not payload:
                        self._devices.pop(device_id, None)
                        return
                    dv = self._device(device_id)
                    dv.state = protocol.parse(ReportedState, topic, payload)
                    if not retained:
                        dv.last_seen = now
                    elif dv.last_seen is None:
                        dv.last_seen = dv.state.updated_at
                elif leaf == "telemetry":
                    t = protocol.parse(Telemetry, topic, payload)
                    dv = self._device(device_id)
                    dv.last_telemetry, dv.last_seen = t, now
                    self._windows.append(t.model_copy(update={"sent_at": now}))  # the controller's clock
        except protocol.ProtocolError:
            self.malformed += 1

    # -- reading ---------------------------------------------------------------------------
    def devices(self) -> dict[str, DeviceView]:
        """A snapshot: device id -> view (only devices that have reported a state)."""
        with self._lock:
            return {d: DeviceView(v.device_id, v.state, v.desired, v.online, v.last_seen, v.last_telemetry)
                    for d, v in self._devices.items() if v.state is not None}

    def windows_since(self, since: float) -> list[Telemetry]:
        with self._lock:
            return [w for w in self._windows if w.sent_at >= since]

    # -- writing ---------------------------------------------------------------------------
    def publish_desired(self, states: Mapping[str, DesiredState | None], timeout: float = 30.0) -> None:
        """Publish (retained, qos 1) each device's desired state (None clears it) and wait for
        every acknowledgement; raises :class:`~slmops.fleet.mqtt.BrokerError` when it cannot."""
        if not self.client.connected_event.is_set():
            raise mqtt.BrokerError(f"not connected to the broker at {self.broker.url}.")
        infos = []
        for device_id, ds in states.items():
            payload = ds.to_payload() if ds is not None else b""
            infos.append(self.client.publish(protocol.desired_topic(self.fleet, device_id), payload, qos=1,
                                             retain=True))
        deadline = time.monotonic() + timeout
        for info in infos:
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise mqtt.BrokerError(f"could not publish desired states: {exc}.") from None
            if not info.is_published():
                raise mqtt.BrokerError("the broker did not acknowledge the desired states in time.")
        with self._lock:
            for device_id, ds in states.items():
                self._device(device_id).desired = ds


def snapshot(broker: mqtt.Broker, fleet: str, timeout: float = 10.0) -> dict[str, DeviceView]:
    """One look at the fleet's retained messages (for ``fleet status`` and ``rollout start``)."""
    view = FleetView(broker, fleet)
    try:
        view.start()
        if not view.wait_synced(timeout):
            raise mqtt.BrokerError(f"cannot reach the MQTT broker at {broker.url} (no answer in {timeout:.0f}s).",
                                   "Start one with `slmops fleet up` or pass --broker mqtt://HOST:PORT.")
        return view.devices()
    finally:
        view.close()


def version_counts(devices: Iterable[DeviceView]) -> dict[str, int]:
    out: dict[str, int] = {}
    for dv in devices:
        key = dv.active_digest or "(none)"
        out[key] = out.get(key, 0) + 1
    return out
