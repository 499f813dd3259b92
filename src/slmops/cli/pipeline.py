"""``slmops run``, ``slmops runs ...`` and ``slmops demo``: pipelines from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, err_console, open_store, print_json, status
from slmops.cli.progress import GenerateBar, TrainBar
from slmops.errors import SlmopsError
from slmops.pipeline import (
    PipelineRun,
    compare_runs,
    example_pipeline,
    list_runs,
    load_run,
    load_spec,
    parse_assignments,
    run_pipeline,
)
from slmops.pipeline.demo import run_demo
from slmops.pipeline.report import case_study
from slmops.pipeline.run import plan_pipeline
from slmops.pipeline.steps import Observer

runs_app = typer.Typer(help="List, show and compare pipeline runs.", no_args_is_help=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a variable (NAME=VALUE) or a step's setting (steps.NAME.KEY=VALUE); repeat.")]
ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="Re-run this step even if cached (repeat; 'all').")]
ReportToOpt = Annotated[list[str] | None, typer.Option("--report-to", help="Also track the run in: mlflow.")]
ReportOpt = Annotated[Path | None, typer.Option("--report-dir", help="Also copy report.md and report.html here.")]


class ConsoleObserver(Observer):
    """Draws a pipeline run: a header per step, status lines, and the training/teacher progress bars."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: list[Any] = []
        self.t0 = time.perf_counter()

    def _close_bars(self) -> None:
        for bar in self.bars:
            bar.__exit__(None, None, None)
        self.bars.clear()

    def _bar(self, cls: type) -> Any:
        bar = next((b for b in self.bars if isinstance(b, cls)), None)
        if bar is None:
            bar = cls(self.enabled).__enter__()
            self.bars.append(bar)
        return bar

    def step_started(self, name: str, kind: str, index: int, total: int) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            err_console.rule(f"[bold]{index}/{total} {name}[/bold] ({kind}) · {elapsed:.0f} s", align="left")

    def step_finished(self, name: str, status_: str, seconds: float, outputs: dict[str, Any]) -> None:
        self._close_bars()
        if self.enabled:
            model = f" -> {outputs['model']}" if isinstance(outputs.get("model"), str) else ""
            how = "from the cache" if status_ == "cached" else f"in {seconds:.1f} s"
            err_console.print(f"[green]done[/green] {name} {how}{model}", highlight=False)

    def message(self, text: str) -> None:
        if self.enabled:
            status(text)

    def train(self, event: Any) -> None:
        self._bar(TrainBar).update(event)

    def generate(self, event: Any) -> None:
        self._bar(GenerateBar).update(event)


def _execute(run: Any, as_json: bool) -> PipelineRun:
    observer = ConsoleObserver(enabled=not as_json)
    try:
        return run(observer)
    finally:
        observer._close_bars()


def _print_run(run: PipelineRun) -> None:
    for name, step in run.steps.items():
        if step.kind == "evaluate" and step.outputs.get("labels"):
            labels, rows = case_study(step.outputs)
            table = Table(title=f"{name}: reductions and retention against {labels[0]}")
            table.add_column("")
            for lab in labels:
                table.add_column(lab, justify="right")
            for row, cells in rows:
                table.add_row(row, *cells)
            console.print(table)
    steps = Table(title=f"pipeline {run.pipeline}: {run.status} (run {run.id})")
    for col in ("step", "kind", "status", "time", "model / outcome"):
        steps.add_column(col, justify="right" if col == "time" else "left")
    for name, s in run.steps.items():
        o = s.outputs
        outcome = o.get("model") or ("passed" if o.get("passed") else "") or ""
        if s.kind == "deploy" and o.get("answer") is not None:
            outcome = f"{o.get('model')}: {o['answer'][:60]!r}"
        steps.add_row(name, s.kind, s.status, f"{s.seconds:.1f} s", str(outcome))
    console.print(steps)
    if run.report_files:
        console.print(f"report: {run.report_files.get('html')}  (and report.md beside it)", highlight=False)


def run_cmd(
    file: Annotated[Path | None, typer.Argument(help="Pipeline YAML file.")] = None,
    set_: SetOpt = None,
    force: ForceOpt = None,
    report_dir: ReportOpt = None,
    report_to: ReportToOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say which steps would run and which come from the cache.")] = False,
    schema: Annotated[bool, typer.Option(
        "--schema", help="Print the JSON Schema of pipeline files (for editors) and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a pipeline: steps in order, each from the cache when its inputs and settings are
    unchanged; a gate that fails stops the run. A killed run, run again, resumes in the step it
    was in. The run's folder keeps the spec, the state, the logs and report.html / report.md.

    --set overrides a variable (train_steps=40) or any step setting (steps.train.lr=0.0002);
    --dry-run checks the file and lists what would run without running anything.

    Example: slmops run pipeline.yaml --set train_steps=40 --set steps.eval.limit=20 --dry-run
    """
    if schema:
        from slmops.pipeline.schema import render

        typer.echo(render(), nl=False)
        return
    if file is None:
        raise SlmopsError("Give the pipeline file: slmops run FILE.",
                          "`slmops demo --show-pipeline` prints an example; `slmops run --schema` its format.")
    spec = load_spec(file, parse_assignments(set_))
    store = open_store()
    if dry_run:
        _print_plan(plan_pipeline(spec, store=store, force=tuple(force or ())), spec.name, as_json)
        return
    run = _execute(lambda obs: run_pipeline(spec, store=store, observer=obs, force=tuple(force or ()),
                                            report_dir=report_dir, report_to=tuple(report_to or ())), as_json)
    if as_json:
        print_json(run.to_dict())
    else:
        _print_run(run)


def _print_plan(plan: list[Any], name: str, as_json: bool) -> None:
    if as_json:
        print_json({"pipeline": name, "steps": [p.to_dict() for p in plan]})
        return
    table = Table(title=f"dry run: {name}", title_justify="left")
    for col in ("step", "kind", "would", "why"):
        table.add_column(col)
    for p in plan:
        table.add_row(p.name, p.kind, "[green]come from the cache[/]" if p.status == "cached" else "[yellow]run[/]",
                      p.reason)
    console.print(table)
    cached = sum(p.status == "cached" for p in plan)
    console.print(f"{cached} of {len(plan)} steps from the cache, {len(plan) - cached} to run; nothing was run.")


def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer prompts, steps and test items (~3 min).")] = False,
    set_: SetOpt = None,
    force: ForceOpt = None,
    report_dir: Annotated[Path, typer.Option("--report-dir", help="Where report.md and report.html go.")] = Path(
        "slmops-demo"
    ),
    show_pipeline: Annotated[
        bool, typer.Option("--show-pipeline", help="Print the demo pipeline YAML and exit.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole life cycle on the built-in teacher and task: distill SmolLM2-135M-Instruct into a
    pruned student, quantize it to int4 ONNX, evaluate teacher and students, gate, register,
    serve one request through the official openai client, and write the report. A second run with
    nothing changed comes from the cache in seconds.

    Example: slmops demo --quick
    """
    if show_pipeline:
        typer.echo(example_pipeline("demo").read_text(encoding="utf-8"), nl=False)
        return
    store = open_store()
    run = _execute(lambda obs: run_demo(quick=quick, store=store, observer=obs, report_dir=report_dir,
                                        force=tuple(force or ()), overrides=parse_assignments(set_)), as_json)
    if as_json:
        print_json(run.to_dict())
    else:
        _print_run(run)


@runs_app.command("list")
def runs_list(
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only runs of this pipeline.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List pipeline runs, newest first.

    Example: slmops runs list --pipeline demo
    """
    runs = list_runs(open_store(), pipeline)
    if as_json:
        print_json([{k: v for k, v in r.to_dict().items() if k != "steps"} | {"seconds": r.seconds} for r in runs])
        return
    table = Table(title="Pipeline runs")
    for col in ("run", "pipeline", "status", "started", "steps run / cached", "time"):
        table.add_column(col)
    for r in runs:
        ran = sum(s.status == "done" for s in r.steps.values())
        cached = sum(s.status == "cached" for s in r.steps.values())
        table.add_row(r.id, r.pipeline, r.status, r.started_at, f"{ran} / {cached}", f"{r.seconds:.0f} s")
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id, a unique prefix, or 'latest'.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one run: its steps, outputs, and where its report is.

    Example: slmops runs show latest
    """
    run = load_run(open_store(), run_id)
    if as_json:
        print_json(run.to_dict())
        return
    _print_run(run)
    console.print(f"folder: {run.dir}", highlight=False)
    for name, s in run.steps.items():
        if s.error:
            err_console.print(f"[red]{name} failed:[/red] {s.error}", highlight=False)


@runs_app.command("compare")
def runs_compare(
    first: Annotated[str, typer.Argument(help="Run id (or prefix, or 'latest').")],
    second: Annotated[str, typer.Argument(help="Run id (or prefix).")],
    all_metrics: Annotated[bool, typer.Option("--all", help="Also list outputs that did not change.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare two runs: which steps changed (their key), and every numeric output side by side.

    Example: slmops runs compare demo-20261129-101500 latest
    """
    store = open_store()
    a, b = load_run(store, first), load_run(store, second)
    steps, metrics = compare_runs(a, b)
    if as_json:
        print_json({"a": a.id, "b": b.id, "steps": [vars(r) for r in steps], "metrics": [vars(r) for r in metrics]})
        return
    table = Table(title=f"{a.id} vs {b.id}")
    for col in ("step / output", a.id, b.id, "changed"):
        table.add_column(col)
    for r in steps:
        table.add_row(r.name, r.a, r.b, "key changed" if r.changed else "")
    for r in metrics:
        if r.changed or all_metrics:
            table.add_row(r.name, r.a, r.b, "*" if r.changed else "")
    console.print(table)
