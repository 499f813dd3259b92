"""``slmops data``: datasets from the server's traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import JsonOpt, console, print_json

app = typer.Typer(help="Build datasets, e.g. from logged server traffic.", no_args_is_help=True)


@app.command("from-logs")
def from_logs(
    logs: Annotated[
        list[Path], typer.Argument(help="Request logs written by `slmops serve --request-log` (rotated ones too).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Prompts file to write (JSONL).")],
    include_errors: Annotated[
        bool, typer.Option("--include-errors", help="Keep requests that did not finish with status 200.")
    ] = False,
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="Keep repeated prompts.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn logged (already PII-redacted) traffic into a prompts dataset for the next distillation or fine-tune.

    Each record keeps the request's 'messages' or 'prompt', so `slmops generate --input` reads it.

    Example: slmops data from-logs requests.jsonl --output prompts.jsonl
    """
    from slmops.serve.reqlog import write_prompts

    count = write_prompts(logs, output, only_ok=not include_errors, dedupe=not keep_duplicates)
    if as_json:
        print_json({"records": count, "output": str(output)})
    else:
        console.print(f"wrote {count} prompts to {output}")
