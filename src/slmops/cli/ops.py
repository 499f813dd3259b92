"""``slmops bench`` and ``slmops validate``: load-test a server and run the deployment checklist
(thin layers over :func:`slmops.ops.loadtest.run_bench` and
:func:`slmops.ops.validate.run_validate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, ThreadsOpt, console, open_store, print_json, status
from slmops.evaluate.tasks import TASKS

TargetArg = Annotated[str, typer.Argument(
    help="A store reference (served here on a free local port) or a server URL: http://host:port/v1[#model].")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="The 'model' field to send to a URL target (default: after '#', else the server's first).")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="SLMOPS_API_KEY", help="Bearer key for a URL target (env SLMOPS_API_KEY).")]


def bench(
    target: TargetArg,
    concurrency: Annotated[str, typer.Option(
        "--concurrency", help="Concurrent clients per level, comma-separated.")] = "1,2,4,8,16",
    requests_per_client: Annotated[int, typer.Option(
        "--requests-per-client", min=1, help="Streaming requests each client sends per level, one after another.")
    ] = 2,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="max_tokens of every request.")] = 64,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Requests sent before measuring.")] = 2,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    max_batch_size: Annotated[int, typer.Option(
        "--max-batch-size", min=1, help="Batch size of the server started for a store reference.")] = 16,
    threads: ThreadsOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write bench.json, bench.md and bench.svg (tokens/s chart) here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load-test an OpenAI-compatible server over a concurrency sweep.

    Fixed prompts, fixed max_tokens, greedy, streamed: per level, time to first token,
    inter-token latency, aggregate tokens/s and latency p50/p95/p99; for a store reference
    (which it serves itself in a child process) also the server's peak resident memory and CPU.

    Example: slmops bench smollm2-135m-instruct --concurrency 1,4 --max-tokens 32 --output bench-out
    """
    from slmops.ops.loadtest import BenchConfig, parse_levels, run_bench

    config = BenchConfig(
        target=target, concurrency=parse_levels(concurrency), requests_per_client=requests_per_client,
        max_tokens=max_tokens, warmup=warmup, model=model, api_key=api_key, max_batch_size=max_batch_size,
        threads=threads, output=str(output) if output else None,
    )  # fmt: skip
    report = run_bench(config, store=open_store(), progress=status)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"bench {report.model}: {config.max_tokens} max tokens; latencies in ms (p50 unless named)",
                  title_justify="left")  # fmt: skip
    for head in ("clients", "req", "err", "tok/s", "TTFT", "ITL", "p50", "p95", "p99", "server MB", "CPU %"):
        table.add_column(head, justify="right")
    for lv in report.levels:
        cells = (lv.concurrency, lv.requests, lv.errors, lv.tokens_per_second, lv.ttft_p50_ms, lv.itl_p50_ms,
                 lv.latency_p50_ms, lv.latency_p95_ms, lv.latency_p99_ms, lv.server_peak_rss_mb,
                 lv.server_cpu_percent)  # fmt: skip
        table.add_row(*(_num(c) for c in cells))
    console.print(table)
    if report.files:
        console.print(f"[dim]written: {', '.join(report.files.values())}[/dim]")


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def validate(
    target: TargetArg,
    eval_file: Annotated[str, typer.Option(
        "--eval", help="Domain queries with gold answers (JSONL/JSON/CSV/Parquet, or builtin:support-tickets).")],
    task: Annotated[str, typer.Option("--task", "-t", help=f"Task type: {', '.join(TASKS)}.")] = "qa",
    min_score: Annotated[float, typer.Option(
        "--min-score", help="Least primary-metric score on the eval file (accuracy, token F1, ...).")] = 0.5,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Label set for classification, comma-separated (default: the gold labels seen).")] = None,
    target_field: Annotated[str, typer.Option("--target-field", help="Field holding the gold answer.")] = "answer",
    input_field: Annotated[str, typer.Option("--input-field", help="Field holding the input text.")] = "prompt",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N eval records.")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, help="Most tokens per eval answer (default: per task).")] = None,
    regex: Annotated[str | None, typer.Option(
        "--regex", help="Every answer must contain a match (anchor with ^...$ for the whole answer).")] = None,
    json_schema: Annotated[Path | None, typer.Option(
        "--json-schema", help="Every answer must be JSON valid against this schema file.")] = None,
    min_format_rate: Annotated[float, typer.Option(
        "--min-format-rate", min=0.0, max=1.0, help="Least share of answers in the right format.")] = 1.0,
    soak_requests: Annotated[int, typer.Option(
        "--soak-requests", min=1, help="Requests in the memory soak (after the warm-up).")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Requests before the soak's first reading.")] = 20,
    max_rss_growth_pct: Annotated[float, typer.Option(
        "--max-rss-growth-pct", min=0.0, help="Most resident-memory growth over the soak, in percent.")] = 5.0,
    long_input_words: Annotated[int, typer.Option(
        "--long-input-words", min=1, help="Words in the long input of the latency check.")] = 300,
    max_latency_ratio: Annotated[float, typer.Option(
        "--max-latency-ratio", min=0.0, help="Most median latency of long inputs over short ones.")] = 4.0,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, help="Concurrent requests for the eval queries and the soak.")] = 4,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the deployment checklist against a model or server; exit code 1 when a check fails.

    Checks: task metric on the eval file (--min-score), output format (--regex or
    --json-schema), edge cases and malformed requests answered without a 5xx, latency of long
    inputs against short ones, and resident-memory growth over a soak (only when it serves the
    store reference itself).

    Example: slmops validate smollm2-135m-instruct --eval builtin:support-tickets --task classification --min-score 0.1
    """
    from slmops.evaluate.tasks import parse_labels
    from slmops.ops.validate import ValidateConfig, run_validate

    config = ValidateConfig(
        target=target, eval=eval_file, task=task, min_score=min_score, labels=parse_labels(labels),
        target_field=target_field, input_field=input_field, limit=limit, max_tokens=max_tokens, regex=regex,
        json_schema=str(json_schema) if json_schema else None, min_format_rate=min_format_rate,
        soak_requests=soak_requests, warmup=warmup, max_rss_growth_pct=max_rss_growth_pct,
        long_input_words=long_input_words, max_latency_ratio=max_latency_ratio, concurrency=concurrency,
        model=model, api_key=api_key, threads=threads,
    )  # fmt: skip
    report = run_validate(config, store=open_store(), progress=status)
    if as_json:
        print_json(report.to_dict())
    else:
        verdict = "[bold green]PASSED[/bold green]" if report.passed else "[bold red]FAILED[/bold red]"
        table = Table(title=f"validate {report.model}", title_justify="left")
        table.add_column("check", no_wrap=True)
        for head in ("result", "figure", "threshold", "detail"):
            table.add_column(head, overflow="fold")
        colors = {"pass": "green", "fail": "red", "skip": "yellow"}
        for c in report.checks:
            table.add_row(c.name, f"[{colors[c.status]}]{c.status}[/]", c.figure, c.threshold, c.detail)
        console.print(table)
        console.print(verdict)
    if not report.passed:
        raise typer.Exit(1)
