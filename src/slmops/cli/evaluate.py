"""``slmops eval``: evaluate and compare models on a test set (thin layer over
:func:`slmops.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, field_option, open_store, print_json, status
from slmops.errors import SlmopsError
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.report import record_summary, side_by_side
from slmops.evaluate.results import EvalReport
from slmops.evaluate.run import EvalConfig, default_report_dir, evaluate


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(p.strip() for v in values or () for p in v.split(",") if p.strip())


def render_table(report: EvalReport) -> Table:
    headers, rows = side_by_side(report)
    table = Table(title=f"{report.task} on {report.dataset}: {record_summary(report)}", title_justify="left")
    table.add_column("", no_wrap=True)
    for h in headers:
        table.add_column(h, justify="right", overflow="fold")
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            table.add_section()
        table.add_row(r.name, *r.cells)
    return table


def eval_cmd(
    refs: Annotated[list[str], typer.Argument(help=EvalConfig.model_fields["refs"].description)],
    data: str = field_option(EvalConfig, "data", "-d"),
    task: str = field_option(EvalConfig, "task", "-t"),
    labels: str | None = field_option(EvalConfig, "labels", default=None),
    target_field: str = field_option(EvalConfig, "target_field"),
    input_field: str = field_option(EvalConfig, "input_field"),
    metrics: list[str] | None = field_option(EvalConfig, "metrics", default=None),
    perplexity: Path | None = field_option(EvalConfig, "perplexity"),
    judge: str | None = field_option(EvalConfig, "judge"),
    max_tokens: int | None = field_option(EvalConfig, "max_tokens"),
    batch_size: int = field_option(EvalConfig, "batch_size"),
    limit: int | None = field_option(EvalConfig, "limit"),
    latency_samples: int = field_option(EvalConfig, "latency_samples"),
    raw: bool = field_option(EvalConfig, "raw"),
    system: str | None = field_option(EvalConfig, "system"),
    seed: int = field_option(EvalConfig, "seed"),
    threads: int | None = field_option(EvalConfig, "threads"),
    report_dir: Path | None = field_option(EvalConfig, "report_dir"),
    no_record: Annotated[bool, typer.Option(
        "--no-record", help="Do not record the results in the store's model metrics.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one or more models on a test set and compare them side by side.

    Each record has an input ('prompt' or 'messages') and a gold answer ('answer' or
    --target-field). Reports quality (with 95% bootstrap intervals), per-request latency,
    tokens/s, peak memory, size and parameters; with several models, deltas and reductions
    against the first. Writes report.json, report.md and report.html, and records the
    results in the store under eval.<task>.<dataset>.

    Example: slmops eval smollm2-135m-instruct ./my-int4 --data builtin:support-tickets --task classification
    """
    store = open_store()
    out_dir = report_dir or default_report_dir(store, task, resolve_data(data)[1])
    config = EvalConfig(
        tuple(refs), data, task, labels or (), target_field, input_field, _split(metrics), perplexity, judge,
        max_tokens, batch_size, limit, latency_samples, raw, system, threads, seed, out_dir, not no_record,
    )
    report = evaluate(config, store=store, progress=status)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(render_table(report))
        for w in report.config.get("warnings", []):
            console.print(f"[yellow]warning:[/yellow] {w}")
        console.print(f"[dim]* primary metric; reports: {', '.join(report.report_files.values())}[/dim]")
    if not any(m.ok for m in report.models):
        errors = "; ".join(f"{m.ref}: {m.error}" for m in report.models)
        raise SlmopsError(f"No model could be evaluated ({errors}).", "Check the model references.")
