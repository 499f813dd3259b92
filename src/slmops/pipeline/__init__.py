"""Pipelines: a YAML file of steps (distill, finetune, prune, optimize, evaluate, gate, register,
deploy) run in order with content-hash caching, quality gates, run folders and a report.

    from slmops.pipeline import load_spec, run_pipeline
    run = run_pipeline(load_spec(Path("pipeline.yaml")))
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from slmops.pipeline.run import run_pipeline
from slmops.pipeline.runs import compare_runs, list_runs, load_run
from slmops.pipeline.spec import PipelineSpec, PipelineSpecError, load_spec, parse_assignments, parse_spec
from slmops.pipeline.state import PipelineRun, StepState
from slmops.pipeline.steps import GateFailed, Observer


def example_pipeline(name: str = "demo") -> Path:
    """Path of a pipeline shipped with slmops (``demo``: the whole life cycle on the built-in task)."""
    return Path(str(resources.files("slmops.pipeline") / "examples" / f"{name}.yaml"))


__all__ = [
    "GateFailed", "Observer", "PipelineRun", "PipelineSpec", "PipelineSpecError", "StepState", "compare_runs",
    "example_pipeline", "list_runs", "load_run", "load_spec", "parse_assignments", "parse_spec", "run_pipeline",
]
