"""The device agent's settings (:class:`AgentConfig`), apart from the agent itself so that
``slmops agent run`` builds its options from the fields without loading the server."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field

from slmops.configs import CommandConfig
from slmops.errors import SlmopsError
from slmops.fleet import mqtt, oci, protocol


class AgentConfig(CommandConfig):
    """Everything one device agent needs; field = ``slmops agent run`` flag (``--report-interval`` =
    ``report_interval``). ``broker`` and ``labels`` are given parsed (the CLI reads a URL and
    ``k=v,k2=v2``); ``registry_credentials`` default to the environment."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    what: ClassVar[str] = "agent settings"

    device_id: str = Field(description="This device's id (letters, digits, . _ -).")
    fleet: str = Field(description="The fleet it belongs to.")
    broker: mqtt.Broker = Field(description="mqtt://HOST:PORT or mqtts://... [default: $SLMOPS_BROKER, else what "
                                            "`fleet up` recorded]")
    labels: dict[str, str] = Field(default_factory=dict, description="k=v,k2=v2 labels that roll-outs select on.")
    home: Path | None = Field(None, description="The agent's own store [default: $SLMOPS_HOME].")
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=0, description="Port of the local OpenAI API (0 = any free).")
    trust: Path | None = Field(None, description="Only run artifacts signed by this public key (path or key name).")
    keep: int = Field(2, ge=0, description="Previous versions kept on disk for rollback.")
    report_interval: float = Field(30.0, ge=0.05, description="Seconds between telemetry reports.")
    share_logs: bool = Field(False, description="Publish redacted request logs to the broker (prompts never leave "
                                                "the device otherwise).")
    min_free_bytes: int = Field(0, ge=0, description="Refuse a download that would leave less free disk than this.")
    download_rate_limit: int | None = Field(None, ge=1024, description="Most bytes/s to download (metered links).")
    plain_http: bool = Field(False, description="Allow a plain-HTTP registry that is not on loopback.")
    registry_credentials: oci.Credentials | None = Field(None, description="Registry login (default: "
                                                                           "SLMOPS_REGISTRY_USERNAME / _PASSWORD).")
    probe_max_tokens: int = Field(16, ge=1, description="Tokens the probe of a new version generates.")
    threads: int | None = Field(None, description="CPU threads for inference.")
    retry_min_s: float = Field(0.5, gt=0, description="First back-off after a failed step (seconds).")
    retry_max_s: float = Field(30.0, gt=0, description="Longest back-off after failed steps (seconds).")

    def problems(self) -> list[str]:
        p: list[str] = []
        for kind, value in (("fleet", self.fleet), ("device", self.device_id)):
            try:
                protocol.check_name(kind, value)
            except SlmopsError as exc:
                p.append(exc.message.rstrip(".") + (f" ({exc.hint.rstrip('.')})" if exc.hint else ""))
        return p
