"""MQTT plumbing over paho-mqtt 2.x: broker URLs, a connected client with credentials, TLS, a
last will and reconnect with backoff, plus one-shot helpers to publish retained JSON and to
collect the retained messages of a wildcard.

Broker URL: ``mqtt://[USER@]HOST[:PORT]`` (1883) or ``mqtts://[USER@]HOST[:PORT]`` (8883). The
password never goes on a command line: it comes from ``SLMOPS_BROKER_PASSWORD`` (and the user
from ``SLMOPS_BROKER_USERNAME`` when the URL has none) or from a credentials file.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from slmops.errors import SlmopsError


class BrokerError(SlmopsError):
    """The broker cannot be reached or refused us."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @property
    def url(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print the password
        return f"Broker({self.url!r})"


def parse_broker(
    url: str, *, username: str | None = None, password: str | None = None, ca_file: str | Path | None = None
) -> Broker:
    """Parse ``mqtt://``/``mqtts://`` URLs; explicit arguments, then env vars fill credentials."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SlmopsError(f"invalid broker address {url!r}.", "Use mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS).")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise SlmopsError(f"invalid port in broker address {url!r}.") from None
    user = username or (unquote(parts.username) if parts.username else None) or os.environ.get("SLMOPS_BROKER_USERNAME")
    secret = (
        password or (unquote(parts.password) if parts.password else None) or os.environ.get("SLMOPS_BROKER_PASSWORD")
    )
    ca = str(ca_file) if ca_file else os.environ.get("SLMOPS_BROKER_CA")
    if ca and not Path(ca).is_file():
        raise SlmopsError(f"broker CA file {ca} does not exist.")
    return Broker(parts.hostname, port, parts.scheme == "mqtts", user or None, secret or None, ca)


_RC_TEXT = {
    "Not authorized": "the broker refused these credentials (not authorized)",
    "Bad user name or password": "the broker refused the user name or password",
}


def make_client(
    broker: Broker,
    *,
    client_id: str | None = None,
    will: tuple[str, bytes] | None = None,
    on_connect: Callable[[paho.Client], None] | None = None,
    on_message: Callable[[str, bytes, bool], None] | None = None,
    min_backoff: float = 0.5,
    max_backoff: float = 15.0,
) -> paho.Client:
    """A paho client for ``broker`` with credentials, TLS, a retained last will (qos 1) and
    reconnect backoff. ``on_connect`` runs on every (re)connection: subscribe and re-publish
    there. Call :func:`start` to connect in the background."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or f"slmops-{uuid.uuid4().hex[:10]}",
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=max(1, int(min_backoff)), max_delay=max(1, int(max_backoff)))
    client.connected_event = threading.Event()  # type: ignore[attr-defined]
    client.last_error = None  # type: ignore[attr-defined]

    def _on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            c.last_error = _RC_TEXT.get(str(reason_code), str(reason_code))
            return
        c.last_error = None
        c.connected_event.set()
        if on_connect:
            on_connect(c)

    def _on_disconnect(c, userdata, flags, reason_code, properties):
        c.connected_event.clear()
        if reason_code.is_failure:
            c.last_error = _RC_TEXT.get(str(reason_code), str(reason_code))

    client.on_connect = _on_connect
    client.on_disconnect = _on_disconnect
    if on_message:
        client.on_message = lambda c, u, m: on_message(m.topic, m.payload, bool(m.retain))
    return client


def start(client: paho.Client, broker: Broker) -> None:
    """Connect in the background; paho's loop thread reconnects with backoff after a drop and
    keeps trying when the broker is down at start."""
    client.connect_async(broker.host, broker.port, keepalive=15)
    client.loop_start()


def connect(broker: Broker, *, timeout: float = 10.0, **kw) -> paho.Client:
    """A connected client (blocking up to ``timeout``), for short-lived commands."""
    client = make_client(broker, **kw)
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise BrokerError(
            f"cannot reach the MQTT broker at {broker.url}: {exc}.",
            "Start one with `slmops fleet up` or pass --broker mqtt://HOST:PORT.",
        ) from None
    client.loop_start()
    if not client.connected_event.wait(timeout):
        why = client.last_error or f"no answer within {timeout:.0f}s"
        client.loop_stop()
        client.disconnect()
        raise BrokerError(f"cannot connect to the MQTT broker at {broker.url}: {why}.")
    return client


def close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


def publish(client: paho.Client, topic: str, payload: bytes, *, retain: bool = True, timeout: float = 10.0) -> None:
    """Publish at qos 1 and wait for the broker's ack (raises :class:`BrokerError` on refusal)."""
    info = client.publish(topic, payload, qos=1, retain=retain)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as exc:
        raise BrokerError(f"could not publish to {topic}: {exc}.") from None
    if not info.is_published():
        raise BrokerError(f"the broker did not acknowledge the message on {topic} within {timeout:.0f}s.")


def publish_retained(broker: Broker, messages: dict[str, bytes], *, timeout: float = 10.0) -> None:
    """Connect, publish each ``topic -> payload`` retained (empty payload clears), disconnect."""
    client = connect(broker, timeout=timeout)
    try:
        for topic, payload in messages.items():
            publish(client, topic, payload, retain=True, timeout=timeout)
    finally:
        close(client)


def collect_retained(broker: Broker, *patterns: str, quiet: float = 0.3, timeout: float = 10.0) -> dict[str, bytes]:
    """The retained messages of ``patterns`` (wildcards allowed): subscribe, then gather until
    no message has arrived for ``quiet`` seconds after the subscription was acknowledged."""
    got: dict[str, bytes] = {}
    last = [time.monotonic()]
    subscribed = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if retained and payload:
            got[topic] = payload
        last[0] = time.monotonic()

    client = connect(broker, timeout=timeout, on_message=on_message)
    try:
        client.on_subscribe = lambda *a: (last.__setitem__(0, time.monotonic()), subscribed.set())
        client.subscribe([(p, 1) for p in patterns])
        if not subscribed.wait(timeout):
            raise BrokerError(f"the broker did not acknowledge the subscription to {', '.join(patterns)}.")
        deadline = time.monotonic() + timeout
        while time.monotonic() - last[0] < quiet and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        close(client)
    return dict(got)


def with_credentials(broker: Broker, username: str | None, password: str | None) -> Broker:
    return replace(broker, username=username or broker.username, password=password or broker.password)
