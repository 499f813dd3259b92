"""The console's one typed config: CLI flag = field name = Python argument."""

from __future__ import annotations

from dataclasses import dataclass

from slmops.errors import SlmopsError
from slmops.ui.live import endpoint_base
from slmops.ui.security import is_loopback


@dataclass(frozen=True)
class UIConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # needed for every action; and for every page off loopback
    serve: tuple[str, ...] = ()  # `slmops serve` endpoints to watch (http://host:port)
    serve_api_key: str | None = None  # their API key (/metrics, /admin/routes); default: api_key
    refresh_s: float = 1.0  # how often the live charts poll
    window_s: float = 5.0  # rates and quantiles over this many seconds
    broker: str | None = None  # the fleet's MQTT broker (default: $SLMOPS_BROKER, else what `fleet up` recorded)
    fleets: tuple[str, ...] = ()  # fleets to show besides those with roll-outs

    def __post_init__(self) -> None:
        problems = []
        if not is_loopback(self.host) and not self.api_key:
            problems.append(f"--host {self.host} is not loopback: pass --api-key so only people with the key see "
                            "the console")
        if self.api_key is not None and len(self.api_key) < 8:
            problems.append("api_key must be at least 8 characters")
        if not 0.2 <= self.refresh_s <= 60:
            problems.append(f"refresh_s must be between 0.2 and 60 (got {self.refresh_s})")
        if not 1 <= self.window_s <= 600:
            problems.append(f"window_s must be between 1 and 600 (got {self.window_s})")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be between 0 and 65535 (got {self.port})")
        for url in self.serve:
            try:
                endpoint_base(url)
            except SlmopsError as exc:
                problems.append(exc.message)
        if problems:
            raise SlmopsError("Invalid console settings: " + "; ".join(problems) + ".")

    @property
    def endpoint_key(self) -> str | None:
        return self.serve_api_key or self.api_key
