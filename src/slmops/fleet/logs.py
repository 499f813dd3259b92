"""The fleet's shared request logs, through the broker, for the next distillation.

Agents started with ``--share-logs`` publish their redacted request-log records as
:class:`~slmops.fleet.protocol.LogBatch` messages (qos 1) on ``slmops/FLEET/devices/+/logs``.
The collector holds a **persistent MQTT session** (fixed client id, clean session off): the
broker keeps the batches that arrive while the collector is away (bounded by the broker's
``max_queued_messages``) and hands them over on the next call. What it receives is appended to
``$SLMOPS_HOME/fleet/logs/FLEET.jsonl`` (kept under ``max_bytes`` by dropping the oldest half),
which ``slmops data from-logs --fleet FLEET`` turns into a prompts file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from slmops.fleet import mqtt, protocol
from slmops.fleet.protocol import LogBatch

MAX_BYTES = 32 << 20


def log_file(home: Path, fleet: str) -> Path:
    return Path(home) / "fleet" / "logs" / f"{protocol.check_name('fleet', fleet)}.jsonl"


def _client_id(home: Path, fleet: str) -> str:
    return f"slmops-logs-{fleet}-{hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:10]}"


def collect(broker: mqtt.Broker, fleet: str, home: Path, *, listen_s: float = 3.0, quiet_s: float = 0.5,
            max_bytes: int = MAX_BYTES, timeout: float = 10.0) -> dict[str, int | str]:
    """Drain the fleet's queued log batches (then listen ``listen_s`` more); returns counts."""
    path = log_file(home, fleet)
    path.parent.mkdir(parents=True, exist_ok=True)
    got: list[dict] = []
    devices: set[str] = set()
    malformed = [0]
    last = [time.monotonic()]
    lock = threading.Lock()
    subscribed, connected = threading.Event(), threading.Event()

    def on_message(client, userdata, msg) -> None:
        last[0] = time.monotonic()
        try:
            batch = protocol.parse(LogBatch, msg.topic, msg.payload)
        except protocol.ProtocolError:
            malformed[0] += 1
            return
        with lock:
            got.extend(r for r in batch.records if isinstance(r, dict))
            devices.add(batch.device_id)

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=_client_id(home, fleet),
                         protocol=paho.MQTTv311, clean_session=False)
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else connected.set()
    client.on_subscribe = lambda *a: subscribed.set()
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise mqtt.BrokerError(f"cannot reach the MQTT broker at {broker.url}: {exc}.",
                               "Start one with `slmops fleet up` or pass --broker mqtt://HOST:PORT.") from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise mqtt.BrokerError(f"cannot connect to the MQTT broker at {broker.url}.")
        client.subscribe(protocol.fleet_wildcard(fleet, "logs"), qos=1)
        if not subscribed.wait(timeout):
            raise mqtt.BrokerError("the broker did not acknowledge the subscription to the fleet's logs.")
        end = time.monotonic() + listen_s
        while time.monotonic() < end or time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        records = list(got)
    if records:
        with open(path, "a", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        _bound(path, max_bytes)
    return {"records": len(records), "devices": len(devices), "malformed": malformed[0], "file": str(path)}


def _bound(path: Path, max_bytes: int) -> None:
    """Keep the file under ``max_bytes``: drop the oldest lines down to half of it (atomically)."""
    if path.stat().st_size <= max_bytes:
        return
    data = path.read_bytes()
    tail = data[-(max_bytes // 2):]
    tail = tail[tail.find(b"\n") + 1:]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(tail)
    os.replace(tmp, path)
