"""A simulated fleet: many devices in one process that speak the device agent's MQTT protocol.

This is a **simulation** for trying the roll-out controller at fleet scale on one machine: no
model is loaded, nothing is downloaded. Each simulated device publishes its retained state and
availability, follows its retained desired state with a download delay (short when the version
is still on disk) and a probe delay, and publishes telemetry every report interval with numbers
drawn around a profile. One paho client carries all devices.

Faults (``--fault``, repeatable), ``KIND:VALUE[@k=v,...][/DIGEST]``: ``@`` limits a fault to
devices with those labels, ``/DIGEST`` (a digest or its first hex digits) to one version; without
it, a version fault hits every version except the one the device started on.

    probe:-20           probe score 20 points lower
    latency:1.5         latencies x1.5 (tokens/s /1.5)
    errors:0.2          20% of requests fail
    download:0.5        half of the devices fail to download
    offline:0.05        5% of the devices are offline the whole time
    flap:0.1            10% go offline and back every flap period
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops import __version__
from slmops.errors import SlmopsError
from slmops.fleet import mqtt, protocol
from slmops.fleet.protocol import ActiveModel, DesiredState, ReportedState, Telemetry
from slmops.fleet.waves import matches, parse_selector

KINDS = ("probe", "latency", "errors", "download", "offline", "flap")
BASE_DIGEST = "sha256:" + hashlib.sha256(b"slmops simulated base version").hexdigest()


@dataclass(frozen=True)
class Fault:
    kind: str
    value: float
    select: dict[str, str] = field(default_factory=dict)
    digest: str | None = None  # a digest prefix (hex), None = any version but the starting one

    def hits_device(self, labels: dict[str, str], device_id: str) -> bool:
        if not matches(labels, self.select):
            return False
        if self.kind in ("download", "offline", "flap"):
            h = int(hashlib.sha256(f"{self.kind}\0{device_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            return h < self.value
        return True

    def hits_version(self, digest: str | None, initial: str | None) -> bool:
        if self.digest is None:
            return digest is not None and digest != initial
        return bool(digest) and digest.removeprefix("sha256:").startswith(self.digest)


def parse_fault(text: str) -> Fault:
    raw = text.strip()
    digest = None
    if "/" in raw:
        raw, digest = raw.rsplit("/", 1)
        digest = digest.strip().removeprefix("sha256:").lower()
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise SlmopsError(f"--fault {text!r}: /DIGEST must be a sha256 digest or its first hex digits.")
    select: dict[str, str] = {}
    if "@" in raw:
        raw, sel = raw.split("@", 1)
        select = parse_selector(sel)
    kind, _, value = raw.partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise SlmopsError(f"--fault {text!r}: unknown kind {kind!r}.", hint=f"Use one of {', '.join(KINDS)}.")
    try:
        v = float(value)
    except ValueError:
        raise SlmopsError(f"--fault {text!r}: {value!r} is not a number.",
                          hint="E.g. probe:-20 or offline:0.05.") from None
    if kind in ("download", "offline", "flap", "errors") and not 0 <= v <= 1:
        raise SlmopsError(f"--fault {text!r}: a {kind} fault takes a fraction between 0 and 1.")
    if kind == "latency" and v <= 0:
        raise SlmopsError(f"--fault {text!r}: a latency factor must be above 0.")
    return Fault(kind, v, select, digest)


def parse_labels(text: str | None) -> dict[str, list[str]]:
    """``zone=a|b|c,hw=pi4|pi5``: device i gets the values round-robin (repeat a value to weight it)."""
    out: dict[str, list[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        vals = [v.strip() for v in values.split("|") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise SlmopsError(f"--labels: cannot read {part!r}.", hint="Write key=value1|value2, e.g. zone=a|b|c.")
        out[key.strip()] = vals
    return out


@dataclass
class SimDevice:
    id: str
    labels: dict[str, str]
    jitter: float
    active: DesiredState | None = None
    desired: DesiredState | None = None
    status: str = "ok"
    reason: str | None = None
    previous: list[str] = field(default_factory=list)
    online: bool = True
    job: int = 0
    started: float = field(default_factory=time.time)
    initial: str | None = None
    known: dict[str, DesiredState] = field(default_factory=dict)  # versions on disk


class Simulator:
    """``start()``, then ``run(stop_event)`` (or ``run_in_thread()``), then ``close()``."""

    def __init__(self, broker: mqtt.Broker, fleet: str, devices: int = 1000, *,
                 labels: dict[str, list[str]] | None = None, faults: list[Fault] | None = None,
                 initial: DesiredState | None = None, report_interval: float = 2.0,
                 download_s: tuple[float, float] = (1.0, 3.0), probe_s: float = 0.5, rate_rps: float = 2.0,
                 flap_period_s: float = 20.0, prefix: str = "sim", seed: int = 0) -> None:
        if devices < 1:
            raise SlmopsError("--devices must be at least 1.")
        if report_interval <= 0:
            raise SlmopsError("--report-interval must be above 0.")
        self.broker, self.fleet = broker, protocol.check_name("fleet", fleet)
        self.faults = list(faults or [])
        self.report_interval, self.download_s, self.probe_s = report_interval, download_s, probe_s
        self.rate_rps, self.flap_period_s = rate_rps, flap_period_s
        self.rng = random.Random(seed)
        self.initial = initial or DesiredState(reference=f"oci://simulated/{fleet}@{BASE_DIGEST}", digest=BASE_DIGEST,
                                               format="gguf", served_name=fleet, generation=1)
        labels = labels if labels is not None else {"zone": ["a", "b", "c"]}
        self.devices: dict[str, SimDevice] = {}
        width = max(4, len(str(devices - 1)))
        for i in range(devices):
            did = protocol.check_name("device", f"{prefix}-{i:0{width}d}")
            lab = {k: vals[(i // _stride(labels, k)) % len(vals)] for k, vals in labels.items()}
            self.devices[did] = SimDevice(did, lab, jitter=self.rng.uniform(0.9, 1.1))
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._subscribed = threading.Event()
        self.client = mqtt.make_client(broker, client_id=f"slmops-sim-{fleet}-{self.rng.getrandbits(32):08x}",
                                       on_connect=self._on_connect, on_message=self._on_message)
        self.client.max_inflight_messages_set(2000)
        self.client.max_queued_messages_set(0)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.published = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected_once = False

    # -- MQTT ------------------------------------------------------------------------------
    def _on_connect(self, client: Any) -> None:
        client.subscribe(protocol.fleet_wildcard(self.fleet, "desired"), qos=1)
        if self._connected_once:  # a broker restart: re-announce everyone
            self._inbox.put(("__republish__", b""))
        self._connected_once = True

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self._inbox.put((topic, payload))

    def _pub(self, topic: str, payload: bytes, retain: bool, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
        self.published += 1

    def _publish_state(self, d: SimDevice) -> None:
        active = None
        if d.active is not None:
            active = ActiveModel(digest=d.active.digest, reference=d.active.reference,
                                 store_ref=f"sim:{d.active.digest[7:15]}", rollout=d.active.rollout,
                                 probe_score=self._probe(d))
        st = ReportedState(device_id=d.id, fleet=self.fleet, labels=d.labels, status=d.status,  # type: ignore[arg-type]
                           reason=d.reason, active=active,
                           desired_digest=d.desired.digest if d.desired else None,
                           desired_generation=d.desired.generation if d.desired else None,
                           rollout=d.desired.rollout if d.desired else None, previous=d.previous[:2],
                           uptime_s=time.time() - d.started, slmops_version=f"{__version__}+sim",
                           report_interval_s=self.report_interval)
        self._pub(protocol.state_topic(self.fleet, d.id), st.to_payload(), retain=True, qos=1)

    def _publish_availability(self, d: SimDevice) -> None:
        self._pub(protocol.availability_topic(self.fleet, d.id), b"online" if d.online else b"offline",
                  retain=True, qos=1)

    # -- the model of a device ----------------------------------------------------------------
    def _faults(self, d: SimDevice, kind: str, digest: str | None) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.hits_device(d.labels, d.id)
                and (kind in ("offline", "flap") or f.hits_version(digest, d.initial))]

    def _probe(self, d: SimDevice) -> float | None:
        if d.active is None:
            return None
        v = _version_offset(d.active.digest)
        score = 80.0 + 2 * v + sum(f.value for f in self._faults(d, "probe", d.active.digest))
        return round(max(0.0, min(100.0, score)), 2)

    def _telemetry(self, d: SimDevice) -> Telemetry:
        digest = d.active.digest if d.active else None
        mean = self.rate_rps * self.report_interval
        requests = max(0, round(self.rng.gauss(mean, mean ** 0.5)))
        err = 0.002 + sum(f.value for f in self._faults(d, "errors", digest))
        errors = sum(1 for _ in range(requests) if self.rng.random() < err)
        slow = d.jitter * (1 + 0.02 * _version_offset(digest))
        for f in self._faults(d, "latency", digest):
            slow *= f.value

        def noisy(x: float) -> float:
            return round(x * slow * self.rng.uniform(0.97, 1.03), 2)

        probe = self._probe(d)
        return Telemetry(device_id=d.id, digest=digest, rollout=d.active.rollout if d.active else None,
                         window_s=self.report_interval, requests=requests, errors=errors,
                         p50_ms=noisy(120.0), p95_ms=noisy(260.0), ttft_ms=noisy(45.0),
                         tokens_per_second=round(40.0 / slow * self.rng.uniform(0.97, 1.03), 2),
                         memory_mb=round(350.0 * self.rng.uniform(0.99, 1.01), 1),
                         probe_score=None if probe is None else round(probe + self.rng.gauss(0, 0.5), 2))

    def _follow(self, d: SimDevice) -> None:
        """React to the device's desired state (called on a change and on coming back online)."""
        want = d.desired
        if want is None or not d.online:
            return
        d.job += 1
        job = d.job
        if d.active is not None and d.active.digest == want.digest:
            d.active = want
            if d.status != "ok" or d.reason:
                d.status, d.reason = "ok", None
            self._publish_state(d)
            return
        cached = want.digest in d.known
        d.status, d.reason = ("verifying" if cached else "downloading"), None
        self._publish_state(d)
        delay = self.rng.uniform(0.05, 0.2) if cached else self.rng.uniform(*self.download_s)
        fails = bool(self._faults(d, "download", want.digest)) and not cached

        def downloaded() -> None:
            if d.job != job or not d.online:
                return
            if fails:
                d.status, d.reason = "failed", "download failed: simulated fault (registry unreachable)"
                self._publish_state(d)
                return
            d.status = "probing"
            self._publish_state(d)
            self._at(time.time() + self.probe_s, switched)

        def switched() -> None:
            if d.job != job or not d.online:
                return
            if d.active is not None:
                d.previous = [d.active.digest, *[p for p in d.previous if p != d.active.digest]][:3]
                d.known[d.active.digest] = d.active
            d.active, d.status, d.reason = want, "ok", None
            d.known[want.digest] = want
            self._publish_state(d)

        self._at(time.time() + delay, downloaded)

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic == "__republish__":
            for d in self.devices.values():
                self._publish_availability(d)
                self._publish_state(d)
            return
        try:
            _, device_id, _ = protocol.split_topic(topic)
        except protocol.ProtocolError:
            return
        d = self.devices.get(device_id)
        if d is None:
            return
        if not payload:
            d.desired = None
            return
        try:
            want = protocol.parse(DesiredState, topic, payload)
        except protocol.ProtocolError as exc:
            d.status, d.reason = "failed", str(exc)
            self._publish_state(d)
            return
        if d.desired is not None and d.desired.digest == want.digest and d.desired.generation == want.generation:
            return
        if d.active is None and not self._started:
            # the simulator (re)starts with every device already running its retained desired state
            d.active = d.desired = want
            d.known[want.digest] = want
            return
        d.desired = want
        self._follow(d)

    # -- scheduling --------------------------------------------------------------------------
    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), fn))

    def _every(self, first: float, period: float, fn: Callable[[], None]) -> None:
        def again() -> None:
            fn()
            self._at(time.time() + period, again)
        self._at(first, again)

    _started = False

    def start(self, timeout: float = 15.0) -> Simulator:
        """Connect, read the devices' retained desired states, announce every device."""
        mqtt.start(self.client, self.broker)
        if not self.client.connected_event.wait(timeout) or not self._subscribed.wait(timeout):
            raise mqtt.BrokerError(f"simulator: cannot reach the MQTT broker at {self.broker.url}.")
        quiet_since = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
            try:
                self._handle(*self._inbox.get(timeout=0.05))
                quiet_since = time.monotonic()
            except queue.Empty:
                pass
        self._started = True
        now = time.time()
        fresh: dict[str, DesiredState | None] = {}
        for d in self.devices.values():
            if d.active is None:
                d.active = d.desired = self.initial
                d.known[self.initial.digest] = self.initial
                fresh[d.id] = self.initial
            d.initial = self.initial.digest
            d.online = not self._faults(d, "offline", None)
            self._publish_availability(d)
            self._publish_state(d)
            if fresh.get(d.id):
                self._pub(protocol.desired_topic(self.fleet, d.id), self.initial.to_payload(), retain=True, qos=1)
            if d.online:
                self._every(now + self.rng.uniform(0.1, self.report_interval), self.report_interval,
                            lambda d=d: self._report(d))
            if self._faults(d, "flap", None):
                self._every(now + self.rng.uniform(1.0, self.flap_period_s), self.flap_period_s / 2,
                            lambda d=d: self._flip(d))
        return self

    def _report(self, d: SimDevice) -> None:
        if d.online and self.client.connected_event.is_set():
            self._pub(protocol.telemetry_topic(self.fleet, d.id), self._telemetry(d).to_payload(), retain=False)

    def _flip(self, d: SimDevice) -> None:
        d.online = not d.online
        self._publish_availability(d)
        if d.online:
            self._publish_state(d)
            if d.desired is not None and (d.active is None or d.active.digest != d.desired.digest):
                self._follow(d)
        else:
            d.job += 1  # a download in flight is lost

    def run(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        stop = stop or self._stop
        end = time.monotonic() + duration if duration else None
        while not stop.is_set() and (end is None or time.monotonic() < end):
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, fn = heapq.heappop(self._heap)
                fn()
            wait = min(0.05, max(0.0, self._heap[0][0] - time.time())) if self._heap else 0.05
            try:
                self._handle(*self._inbox.get(timeout=wait))
                for _ in range(1000):
                    self._handle(*self._inbox.get_nowait())
            except queue.Empty:
                pass

    def run_in_thread(self) -> Simulator:
        self._thread = threading.Thread(target=self.run, args=(self._stop,), daemon=True, name="fleet-sim")
        self._thread.start()
        return self

    def close(self, offline: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if offline and self.client.connected_event.is_set():
            infos = [self.client.publish(protocol.availability_topic(self.fleet, d), b"offline", qos=1, retain=True)
                     for d in self.devices]
            for info in infos[-1:]:
                with _suppress():
                    info.wait_for_publish(5)
        mqtt.close(self.client)

    def summary(self) -> dict[str, Any]:
        versions: dict[str, int] = {}
        for d in self.devices.values():
            key = d.active.digest if d.active else "(none)"
            versions[key] = versions.get(key, 0) + 1
        return {"devices": len(self.devices), "online": sum(d.online for d in self.devices.values()),
                "versions": versions, "failed": sum(d.status == "failed" for d in self.devices.values()),
                "published": self.published}


def _stride(labels: dict[str, list[str]], key: str) -> int:
    """Device i takes value (i // stride) % n for each key, so label combinations are spread."""
    stride = 1
    for k, vals in labels.items():
        if k == key:
            return stride
        stride *= len(vals)
    return stride


def _version_offset(digest: str | None) -> float:
    """A small fixed difference between versions in [-0.5, 0.5], from the digest."""
    if not digest:
        return 0.0
    return int(hashlib.sha256(digest.encode()).hexdigest()[:4], 16) / 0xFFFF - 0.5


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True
