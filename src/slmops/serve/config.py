"""The server's one typed config: CLI flag = field name = Python argument."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from slmops.configs import CommandConfig


class ServeConfig(CommandConfig):
    """Every setting of one server; CLI flag = Python argument (``--max-queue`` = ``max_queue``)."""

    what: ClassVar[str] = "server settings"

    models: tuple[str, ...] = Field((), description="Models loaded at start-up; any other store model loads on "
                                                    "first use.")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server.")
    port: int = Field(8000, ge=0, description="TCP port.")
    api_key: str | None = Field(None, description="Require 'Authorization: Bearer KEY' (env SLMOPS_API_KEY).")
    max_batch_size: int = Field(8, ge=1, description="Requests decoded together per model.")
    max_queue: int = Field(64, ge=1, description="Waiting requests per model before 429s.")
    max_tokens_cap: int = Field(2048, ge=1, description="Largest max_tokens a request may ask.")
    memory_budget_mb: float = Field(4096, ge=0.001, description="Unload least recently used models beyond this.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (bytes).")
    cors_origins: tuple[str, ...] = Field((), description="Allow browser calls from this origin (repeatable).")
    request_log: Path | None = Field(None, description="Append PII-redacted JSONL request logs here (rotated by "
                                                       "size).")
    request_log_max_bytes: int = Field(10 << 20, ge=1024, description="Rotate the request log at this size (bytes).")
    request_log_backups: int = Field(3, description="Rotated request logs kept.")
    threads: int | None = Field(None, description="CPU threads for inference (default: all cores).")
    routes: dict[str, dict[str, float]] = Field(default_factory=dict, description="Canary: public name -> "
                                                                                  "{ref: weight}.")
    docs: bool = Field(True, description="Serve /openapi.json and the /docs page.")

    def problems(self) -> list[str]:
        if self.api_key is not None and len(self.api_key) < 8:
            return ["api_key must be at least 8 characters"]
        return []
