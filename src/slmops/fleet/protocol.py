"""The fleet's MQTT protocol: topic names and the three message shapes, shared by the device
agent, the simulator, ``fleet assign`` and the roll-out controller.

Kubernetes-style: every device has a **desired state** (retained, written by ``fleet assign``
or the roll-out controller) and publishes its **reported state** (retained) and, every report
interval, **telemetry** over the last window (not retained). A device's **availability** is a
retained ``online``/``offline`` flag whose ``offline`` is the agent's MQTT last will, so the
broker marks a device that vanished.

Topics (``FLEET`` and ``DEVICE`` are validated names)::

    slmops/FLEET/devices/DEVICE/desired       retained  DesiredState     controller -> device
    slmops/FLEET/devices/DEVICE/state         retained  ReportedState    device -> controller
    slmops/FLEET/devices/DEVICE/telemetry               Telemetry        device -> controller
    slmops/FLEET/devices/DEVICE/availability  retained  "online"/"offline" (last will)
    slmops/FLEET/devices/DEVICE/logs                    LogBatch (only with --share-logs)

Every payload is UTF-8 JSON. Parsing never raises anything but :class:`ProtocolError`, whose
message names the topic and the field, so a malformed message is reported, never a crash.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.errors import SlmopsError

SCHEMA_VERSION = 1
TOPIC_ROOT = "slmops"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = r"^sha256:[0-9a-f]{64}$"

Status = Literal["ok", "idle", "downloading", "verifying", "loading", "probing", "failed"]
FORMATS = ("hf", "peft-adapter", "onnx-genai", "gguf")


class ProtocolError(SlmopsError):
    """A message on a fleet topic that does not follow the protocol."""


def check_name(kind: str, value: str) -> str:
    """Fleet and device names go into topic names: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.match(value or ""):
        raise SlmopsError(
            f"invalid {kind} name {value!r}.",
            hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return value


def device_topic(fleet: str, device_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/{check_name('fleet', fleet)}/devices/{check_name('device', device_id)}/{leaf}"


def desired_topic(fleet: str, device_id: str) -> str:
    return device_topic(fleet, device_id, "desired")


def state_topic(fleet: str, device_id: str) -> str:
    return device_topic(fleet, device_id, "state")


def telemetry_topic(fleet: str, device_id: str) -> str:
    return device_topic(fleet, device_id, "telemetry")


def availability_topic(fleet: str, device_id: str) -> str:
    return device_topic(fleet, device_id, "availability")


def logs_topic(fleet: str, device_id: str) -> str:
    return device_topic(fleet, device_id, "logs")


def fleet_wildcard(fleet: str, leaf: str) -> str:
    """``slmops/FLEET/devices/+/LEAF``: every device's topic of one kind."""
    return f"{TOPIC_ROOT}/{check_name('fleet', fleet)}/devices/+/{leaf}"


def split_topic(topic: str) -> tuple[str, str, str]:
    """``slmops/FLEET/devices/DEVICE/LEAF`` -> (fleet, device, leaf)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != TOPIC_ROOT or parts[2] != "devices":
        raise ProtocolError(f"topic {topic!r} is not a slmops device topic.")
    return parts[1], parts[3], parts[4]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION

    def to_payload(self) -> bytes:
        return self.model_dump_json().encode()


class DesiredState(_Message):
    """What a device should run. ``reference`` is pullable (``oci://HOST/REPO@sha256:...``);
    the agent pulls by ``digest`` (the manifest digest) and serves the model as ``served_name``
    (the fleet's public model name). ``generation`` grows with every change so a device can
    report which desired state it has acted on."""

    reference: str = Field(min_length=1)
    digest: str = Field(pattern=_DIGEST)
    format: Literal["hf", "peft-adapter", "onnx-genai", "gguf"]
    served_name: str = Field(min_length=1)
    rollout: str | None = None
    generation: int = Field(default=1, ge=1)
    issued_at: float = Field(default_factory=time.time)


class ActiveModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str
    reference: str
    store_ref: str  # name:version in the device's own store
    rollout: str | None = None
    probe_score: float | None = None


class ReportedState(_Message):
    device_id: str
    fleet: str
    labels: dict[str, str] = Field(default_factory=dict)
    status: Status
    reason: str | None = None  # set when status == "failed"
    active: ActiveModel | None = None
    desired_digest: str | None = None
    desired_generation: int | None = None
    rollout: str | None = None  # the roll-out of the desired state being followed
    previous: list[str] = Field(default_factory=list)  # digests kept on disk, newest first
    uptime_s: float = 0.0
    slmops_version: str = ""
    free_disk_bytes: int | None = None
    port: int | None = None
    report_interval_s: float | None = None  # how often telemetry comes (the roll-out bake must be longer)
    updated_at: float = Field(default_factory=time.time)


class Telemetry(_Message):
    """Measurements over the last ``window_s`` seconds of the active version."""

    device_id: str
    digest: str | None  # the active version the window measured
    rollout: str | None = None
    window_s: float
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    memory_mb: float | None = None
    probe_score: float | None = None
    sent_at: float = Field(default_factory=time.time)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class LogBatch(_Message):
    """Redacted request-log records (as in ``serve --log-requests``), only with --share-logs."""

    device_id: str
    records: list[dict[str, Any]]


def parse(kind: type[_Message], topic: str, payload: bytes) -> Any:
    """Decode one message; any problem is a :class:`ProtocolError` naming topic and field."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message on {topic} is not UTF-8 JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message on {topic} must be a JSON object, not {type(data).__name__}.")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            f"message on {topic} has schema_version {version!r}; this slmops speaks {SCHEMA_VERSION}.",
            hint="Upgrade slmops on this side.",
        )
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
        raise ProtocolError(f"malformed {kind.__name__} on {topic}: {problems}.") from None
