"""The server's one typed config: CLI flag = field name = Python argument."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import SlmopsError


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[str, ...] = ()  # loaded at start-up; any other store model loads on first use
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    max_tokens_cap: int = 2048
    memory_budget_mb: float = 4096
    max_body_bytes: int = 1 << 20
    cors_origins: tuple[str, ...] = ()
    request_log: Path | None = None
    request_log_max_bytes: int = 10 << 20
    request_log_backups: int = 3
    threads: int | None = None
    routes: dict[str, dict[str, float]] = field(default_factory=dict)  # canary: name -> {ref: weight}
    docs: bool = True  # /openapi.json and the interactive /docs page

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= {low} (got {getattr(self, name)})"
            for name, low in (
                ("max_batch_size", 1),
                ("max_queue", 1),
                ("max_tokens_cap", 1),
                ("memory_budget_mb", 0.001),
                ("max_body_bytes", 1024),
                ("request_log_max_bytes", 1024),
                ("port", 0),
            )
            if getattr(self, name) < low
        ]
        if self.api_key is not None and len(self.api_key) < 8:
            problems.append("api_key must be at least 8 characters")
        if problems:
            raise SlmopsError("Invalid server settings: " + "; ".join(problems) + ".")
