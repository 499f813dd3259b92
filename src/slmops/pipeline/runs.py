"""Past pipeline runs: list, load (by id or unique prefix) and compare."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from slmops.errors import SlmopsError
from slmops.models.store import ModelStore
from slmops.pipeline.cache import pipelines_dir
from slmops.pipeline.state import PipelineRun
from slmops.processes import pid_alive


def _read(path: Any) -> PipelineRun | None:
    try:
        run = PipelineRun.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if run.status == "running" and not pid_alive(run.pid):
        run.status = "interrupted"  # killed: `slmops run` again resumes from the step it was in
    return run


def list_runs(store: ModelStore, pipeline: str | None = None) -> list[PipelineRun]:
    folder = pipelines_dir(store) / "runs"
    runs = [r for p in folder.glob("*/state.json") if (r := _read(p)) is not None]
    runs = [r for r in runs if pipeline is None or r.pipeline == pipeline]
    return sorted(runs, key=lambda r: (r.started_at, r.id), reverse=True)


def load_run(store: ModelStore, run_id: str) -> PipelineRun:
    """A run by its id, a unique prefix of it, or ``latest``."""
    runs = list_runs(store)
    if run_id == "latest" and runs:
        return runs[0]
    matches = [r for r in runs if r.id == run_id] or [r for r in runs if r.id.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        recent = ", ".join(r.id for r in runs[:5]) or "none yet"
        raise SlmopsError(f"No pipeline run {run_id!r}.", f"Recent runs: {recent} (`slmops runs list`).")
    raise SlmopsError(f"{run_id!r} matches {len(matches)} runs.", "Give more of the id.")


def flat_metrics(run: PipelineRun) -> dict[str, float]:
    """Every numeric output as ``step.key[.sub]`` (curves and lists left out)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, int | float):  # bools too (a gate's passed)
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)

    for name, step in run.steps.items():
        walk(name, step.outputs)
    return out


@dataclass(frozen=True)
class CompareRow:
    name: str
    a: str
    b: str
    changed: bool


def compare_runs(a: PipelineRun, b: PipelineRun) -> tuple[list[CompareRow], list[CompareRow]]:
    """(steps: status and whether its key changed, metrics: every numeric output in either run)."""
    steps = []
    for name in list(dict.fromkeys([*a.steps, *b.steps])):
        sa, sb = a.steps.get(name), b.steps.get(name)
        key_changed = (sa.key if sa else None) != (sb.key if sb else None)
        steps.append(CompareRow(name, f"{sa.status} {sa.seconds:.1f}s" if sa else "-",
                                f"{sb.status} {sb.seconds:.1f}s" if sb else "-", key_changed))
    ma, mb = flat_metrics(a), flat_metrics(b)
    metrics = []
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        metrics.append(CompareRow(key, "-" if va is None else f"{va:.6g}", "-" if vb is None else f"{vb:.6g}",
                                  va != vb))
    return steps, metrics
