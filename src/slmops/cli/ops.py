"""``slmops bench`` and ``slmops validate``: load-test a server and run the deployment checklist
(thin layers over :func:`slmops.ops.loadtest.run_bench` and
:func:`slmops.ops.validate.run_validate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, ThreadsOpt, console, field_option, open_store, print_json, status
from slmops.evaluate.tasks import TASKS
from slmops.ops.loadtest import BenchConfig
from slmops.ops.validate import ValidateConfig

TargetArg = Annotated[str, typer.Argument(
    help="A store reference (served here on a free local port) or a server URL: http://host:port/v1[#model].")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="The 'model' field to send to a URL target (default: after '#', else the server's first).")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="SLMOPS_API_KEY", help="Bearer key for a URL target (env SLMOPS_API_KEY).")]


def bench(
    target: TargetArg,
    concurrency: str = field_option(BenchConfig, "concurrency", default="1,2,4,8,16",
                                    help="Concurrent clients per level, comma-separated."),
    requests_per_client: int = field_option(BenchConfig, "requests_per_client"),
    max_tokens: int = field_option(BenchConfig, "max_tokens"),
    warmup: int = field_option(BenchConfig, "warmup"),
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    max_batch_size: int = field_option(BenchConfig, "max_batch_size"),
    threads: ThreadsOpt = None,
    output: Path | None = field_option(BenchConfig, "output", "-o"),
    as_json: JsonOpt = False,
) -> None:
    """Load-test an OpenAI-compatible server over a concurrency sweep.

    Fixed prompts, fixed max_tokens, greedy, streamed: per level, time to first token,
    inter-token latency, aggregate tokens/s and latency p50/p95/p99; for a store reference
    (which it serves itself in a child process) also the server's peak resident memory and CPU.

    Example: slmops bench smollm2-135m-instruct --concurrency 1,4 --max-tokens 32 --output bench-out
    """
    from slmops.ops.loadtest import parse_levels, run_bench

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
    eval_file: str = field_option(ValidateConfig, "eval"),
    task: str = field_option(ValidateConfig, "task", "-t", help=f"Task type: {', '.join(TASKS)}."),
    min_score: float = field_option(ValidateConfig, "min_score"),
    labels: str | None = field_option(ValidateConfig, "labels", default=None,
                                      help="Label set for classification, comma-separated (default: the gold "
                                           "labels seen)."),
    target_field: str = field_option(ValidateConfig, "target_field"),
    input_field: str = field_option(ValidateConfig, "input_field"),
    limit: int | None = field_option(ValidateConfig, "limit"),
    max_tokens: int | None = field_option(ValidateConfig, "max_tokens"),
    regex: str | None = field_option(ValidateConfig, "regex"),
    json_schema: Path | None = field_option(ValidateConfig, "json_schema"),
    min_format_rate: float = field_option(ValidateConfig, "min_format_rate"),
    soak_requests: int = field_option(ValidateConfig, "soak_requests"),
    warmup: int = field_option(ValidateConfig, "warmup"),
    max_rss_growth_pct: float = field_option(ValidateConfig, "max_rss_growth_pct"),
    long_input_words: int = field_option(ValidateConfig, "long_input_words"),
    max_latency_ratio: float = field_option(ValidateConfig, "max_latency_ratio"),
    concurrency: int = field_option(ValidateConfig, "concurrency"),
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the deployment checklist against a model or server; exit code 1 when a check fails.

    Checks: task metric on the eval file (--min-score), output format (--regex or
    --json-schema), edge cases and malformed requests answered without a 5xx, time to first
    token growing no faster than linearly with the input length, and resident-memory growth
    over a soak (only when it serves the store reference itself).

    Example: slmops validate smollm2-135m-instruct --eval builtin:support-tickets --task classification --min-score 0.1
    """
    from slmops.evaluate.tasks import parse_labels
    from slmops.ops.validate import run_validate

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
