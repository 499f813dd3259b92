"""``run_pipeline(spec) -> PipelineRun``: the steps in order, each from the cache when it can be.

Reads top to bottom. A run gets a folder (``$SLMOPS_HOME/pipelines/runs/ID``) with the spec
as written, ``state.json`` (every step's status, key, timing and outputs, rewritten
atomically after each change) and the report. For each step: resolve its ``${steps...}``
references, compute its key (a hash of the kind, the resolved settings, the content of every
file and model it reads, and the slmops version), and either take the outputs cached under
that key or run it. A step that re-runs registers new model versions, which changes the keys
of the steps reading them, so exactly the changed step and what depends on it run again.
Interrupted work is kept under the step's key, so a killed pipeline, run again, resumes
inside the step it was in.
"""

from __future__ import annotations

import os
import secrets
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError
from slmops.models.store import ModelStore
from slmops.pipeline.cache import cached, pipelines_dir, remember, step_key
from slmops.pipeline.spec import PipelineSpec, StepSpec, substitute
from slmops.pipeline.state import PipelineRun, StepState
from slmops.pipeline.steps import RUNNERS, GateFailed, Observer, StepContext


# -- the run ---------------------------------------------------------------------------------
def _lookup(run: PipelineRun) -> Any:
    def lookup(expr: str) -> Any:
        parts = expr.split(".")
        if parts[0] == "steps":
            parts = parts[1:]
        if not parts or parts[0] not in run.steps:
            raise KeyError(f"unknown step {parts[0] if parts else ''!r}")
        value: Any = run.steps[parts[0]].outputs
        for i, part in enumerate(parts[1:], 1):
            if not isinstance(value, dict) or part not in value:
                have = ", ".join(value) if isinstance(value, dict) else type(value).__name__
                raise KeyError(f"${{steps.{'.'.join(parts[:i + 1])}}} does not exist (outputs there: {have})")
            value = value[part]
        return value

    return lookup


def _resolve(step: StepSpec, run: PipelineRun) -> dict[str, Any]:
    problems: list[tuple[tuple[Any, ...], str]] = []
    settings = substitute(step.settings, _lookup(run), ("steps", step.name), problems, "steps")
    if problems:
        raise SlmopsError(f"Step {step.name!r}: " + "; ".join(m for _, m in problems) + ".",
                          "Reference an output the earlier step produces (`slmops runs show ID` lists them).")
    return settings


def new_run(spec: PipelineSpec, store: ModelStore) -> PipelineRun:
    started = datetime.now(UTC)
    run_id = f"{spec.name}-{started.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    folder = pipelines_dir(store) / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "pipeline.yaml").write_text(spec.text, encoding="utf-8")
    run = PipelineRun(run_id, folder, spec.name, spec.source, "running", started.isoformat(timespec="seconds"),
                      None, {s.name: StepState(s.name, s.kind) for s in spec.steps}, dict(spec.vars), os.getpid())
    run.save()
    return run


@dataclass(frozen=True)
class PlannedStep:
    """What ``slmops run --dry-run`` says of one step: ``cached`` (its outputs come from the
    cache) or ``run``, and why."""

    name: str
    kind: str
    status: str  # cached | run
    reason: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_pipeline(spec: PipelineSpec, *, store: ModelStore | None = None,
                  force: Sequence[str] = ()) -> list[PlannedStep]:
    """Which steps a run would take from the cache and which it would run, without running any:
    a step is cached when every step it reads is cached and its key (computed exactly as a run
    computes it, from the cached outputs it reads) has a cache entry."""
    store = store or ModelStore()
    run = PipelineRun("dry-run", Path("."), spec.name, spec.source, "planned", "", None,
                      {s.name: StepState(s.name, s.kind) for s in spec.steps}, dict(spec.vars))
    plan: list[PlannedStep] = []
    for step in spec.steps:
        state = run.steps[step.name]
        upstream = [n for n in step.needs if run.steps[n].status != "cached"]
        if "all" in force or step.name in force:
            plan.append(PlannedStep(step.name, step.kind, "run", "forced (--force)"))
        elif upstream:
            plan.append(PlannedStep(step.name, step.kind, "run", f"after {', '.join(upstream)} runs"))
        elif not step.cache:
            plan.append(PlannedStep(step.name, step.kind, "run", "cache: false"))
        else:
            try:
                key = step_key(step.kind, _resolve(step, run), store)
            except SlmopsError as exc:
                plan.append(PlannedStep(step.name, step.kind, "run", f"its inputs cannot be read yet ({exc.message})"))
                continue
            outputs = cached(store, key)
            if outputs is None:
                plan.append(PlannedStep(step.name, step.kind, "run", "no cache entry for its inputs and settings", key))
            else:
                state.status, state.outputs = "cached", outputs
                plan.append(PlannedStep(step.name, step.kind, "cached", "same inputs and settings as a finished run",
                                        key))
    return plan


def run_pipeline(
    spec: PipelineSpec,
    *,
    store: ModelStore | None = None,
    observer: Observer | None = None,
    force: Sequence[str] = (),
    report_dir: Path | None = None,
    report_to: Sequence[str] = (),
) -> PipelineRun:
    """Run ``spec``; steps named in ``force`` (or ``"all"``) ignore the cache; ``report_to``
    ``["mlflow"]`` tracks the run in MLflow. A failing step (or gate) stops the run: its error is
    raised after the state and the report are written."""
    from slmops.pipeline.report import write_report

    store = store or ModelStore()
    observer = observer or Observer()
    unknown = [f for f in force if f != "all" and f not in {s.name for s in spec.steps}]
    if unknown:
        raise SlmopsError(f"--force names unknown steps: {', '.join(unknown)}.",
                          f"Steps: {', '.join(s.name for s in spec.steps)} (or 'all').")
    if any(r != "mlflow" for r in report_to):
        raise SlmopsError(f"--report-to {', '.join(report_to)}: pipelines report to mlflow only.")
    run = new_run(spec, store)
    tracker = None
    if report_to:
        from slmops.pipeline.tracking import MlflowTracker

        tracker = MlflowTracker(store.home, spec.name, run.id, spec.vars)
    error: BaseException | None = None
    try:
        for index, step in enumerate(spec.steps, 1):
            _run_step(step, index, spec, run, store, observer, "all" in force or step.name in force)
            if tracker is not None:
                s = run.steps[step.name]
                tracker.step(s.name, s.kind, s.status, s.seconds, s.settings, s.outputs)
        run.status = "succeeded"
    except GateFailed as exc:
        run.status, error = "gate-failed", exc
    except SlmopsError as exc:
        run.status, error = "failed", exc
    except BaseException as exc:
        run.status, error = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"), exc
    finally:
        for s in run.steps.values():
            if s.status in ("pending", "running"):
                s.status = "skipped" if s.status == "pending" else "failed"
        run.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        run.save()
    try:
        run.report_files = write_report(run, spec, report_dir)
        run.save()
    except Exception as exc:  # a report problem must not hide the pipeline's own outcome
        observer.message(f"could not write the report: {exc}")
        if error is None:
            raise
    if tracker is not None:
        tracker.close(run.status == "succeeded", list(run.report_files.values()))
    if error is not None:
        raise error
    return run


def _run_step(step: StepSpec, index: int, spec: PipelineSpec, run: PipelineRun, store: ModelStore,
              observer: Observer, forced: bool) -> None:
    state = run.steps[step.name]
    observer.step_started(step.name, step.kind, index, len(spec.steps))
    upstream = [n for n in step.needs if run.steps[n].status not in ("done", "cached")]
    if upstream:
        state.status = "skipped"
        run.save()
        return
    settings = _resolve(step, run)
    state.settings, state.key = settings, step_key(step.kind, settings, store)
    outputs = cached(store, state.key) if step.cache and not forced else None
    if outputs is not None:
        state.status, state.outputs = "cached", outputs
        run.save()
        observer.step_finished(step.name, "cached", 0.0, outputs)
        return
    state.status = "running"
    run.save()
    work = pipelines_dir(store) / "work" / state.key[:20]
    work.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(store, spec.name, step.name, work, run.dir, observer, step.settings, _lookup(run))
    t0 = time.perf_counter()
    try:
        state.outputs = RUNNERS[step.kind](settings, ctx)
    except GateFailed as exc:
        state.status, state.outputs, state.error = "failed", exc.outputs, str(exc)
        raise
    except SlmopsError as exc:
        state.status, state.error = "failed", str(exc)
        raise
    except BaseException as exc:
        state.status = "failed"
        state.error = "".join(traceback.format_exception_only(exc)).strip() or type(exc).__name__
        raise
    finally:
        state.seconds = round(time.perf_counter() - t0, 2)
        run.save()
    state.status = "done"
    run.save()
    if step.cache:
        remember(store, state.key, state.name, state.kind, state.seconds, state.outputs)
    observer.step_finished(step.name, "done", state.seconds, state.outputs)
