"""A pipeline run's state (``state.json`` in its folder): every step's status, key, timing,
settings and outputs. Read by the runner, the report, ``slmops runs`` and the UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmops.files import write_json_atomic


@dataclass
class StepState:
    name: str
    kind: str
    status: str = "pending"  # pending | running | done | cached | failed | skipped
    key: str | None = None
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineRun:
    id: str
    dir: Path
    pipeline: str
    source: str
    status: str  # running | succeeded | failed | gate-failed | interrupted
    started_at: str
    finished_at: str | None
    steps: dict[str, StepState]
    vars: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    report_files: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dir"] = str(self.dir)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineRun:
        steps = {k: StepState(**v) for k, v in data["steps"].items()}
        return cls(**{**data, "dir": Path(data["dir"]), "steps": steps})

    def save(self) -> None:
        write_json_atomic(self.dir / "state.json", self.to_dict())
