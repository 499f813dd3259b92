"""``slmops demo``: the built-in pipeline (``examples/demo.yaml``) on the built-in teacher and task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.models.store import ModelStore
from slmops.pipeline import example_pipeline
from slmops.pipeline.run import run_pipeline
from slmops.pipeline.spec import load_spec
from slmops.pipeline.state import PipelineRun
from slmops.pipeline.steps import Observer

# --quick: fewer teacher prompts, training steps and test items (about 3 minutes on 2 cores)
QUICK: dict[str, Any] = {"prompts": 120, "train_steps": 22, "test_limit": 24, "latency_samples": 3}


def run_demo(
    *,
    quick: bool = False,
    store: ModelStore | None = None,
    observer: Observer | None = None,
    report_dir: Path | None = None,
    force: tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> PipelineRun:
    """Run the demo pipeline; ``overrides`` set its variables (after ``quick``'s)."""
    spec = load_spec(example_pipeline("demo"), {**(QUICK if quick else {}), **(overrides or {})})
    return run_pipeline(spec, store=store, observer=observer, force=force, report_dir=report_dir)
