"""``slmops eval``: evaluate and compare models on a test set (thin layer over
:func:`slmops.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, SystemOpt, ThreadsOpt, console, open_store, print_json, status
from slmops.errors import SlmopsError
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.report import record_summary, side_by_side
from slmops.evaluate.results import EvalReport
from slmops.evaluate.run import default_report_dir, evaluate
from slmops.evaluate.tasks import ALL_METRICS, TASKS


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
    refs: Annotated[list[str], typer.Argument(
        help="Models to evaluate: name, name:version, name@alias, a path, or URL#model. The first is the baseline.")],
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Test set (JSONL/JSON/CSV/Parquet), or builtin:support-tickets.")],
    task: Annotated[str, typer.Option("--task", "-t", help=f"Task type: {', '.join(TASKS)}.")],
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Label set for classification/NLI, comma-separated (default: the gold labels seen).")
    ] = None,
    target_field: Annotated[str, typer.Option("--target-field", help="Field holding the gold answer.")] = "answer",
    input_field: Annotated[str, typer.Option(
        "--input-field", help="Field holding the input text (records with 'messages' use those).")] = "prompt",
    metrics: Annotated[list[str] | None, typer.Option(
        "--metrics", help=f"Metrics, comma-separated or repeated ({', '.join(ALL_METRICS)}); the list for "
        "--task generation, extra metrics for the other tasks.")] = None,
    perplexity: Annotated[Path | None, typer.Option(
        "--perplexity", help="Also measure perplexity on this text file (local PyTorch models).")] = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", help="Model or URL#model that scores each answer 1-10 with a rubric (beside the metrics).")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, help="Most tokens per answer (default: per task, 16 for classification).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per generation batch.")] = 8,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N records.")] = None,
    latency_samples: Annotated[int, typer.Option(
        "--latency-samples", min=0, help="Requests timed one at a time for latency p50/p95 (0 = skip).")] = 5,
    raw: Annotated[bool, typer.Option("--raw", help="Send prompts without the chat template (base models).")] = False,
    system: SystemOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for generation and the bootstrap intervals.")] = 0,
    threads: ThreadsOpt = None,
    report_dir: Annotated[Path | None, typer.Option(
        "--report-dir", help="Where report.json/.md/.html go (default: $SLMOPS_HOME/evals/<time>-<task>-<data>).")
    ] = None,
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
    report = evaluate(
        refs, data, task, store=store, progress=status, labels=labels, target_field=target_field,
        input_field=input_field, metrics=_split(metrics), perplexity=perplexity, judge=judge, max_tokens=max_tokens,
        batch_size=batch_size, limit=limit, latency_samples=latency_samples, raw=raw, system=system, seed=seed,
        threads=threads, report_dir=out_dir, record=not no_record,
    )
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
