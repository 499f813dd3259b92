"""``slmops data``: datasets from the server's traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import JsonOpt, console, print_json

app = typer.Typer(help="Build datasets, e.g. from logged server traffic.", no_args_is_help=True)


@app.command("from-logs")
def from_logs(
    output: Annotated[Path, typer.Option("--output", "-o", help="Prompts file to write (JSONL).")],
    logs: Annotated[
        list[Path] | None,
        typer.Argument(help="Request logs written by `slmops serve --request-log` (rotated ones too)."),
    ] = None,
    fleet: Annotated[
        str | None,
        typer.Option("--fleet", help="Also the fleet's logs shared by agents run with --share-logs (via the broker)."),
    ] = None,
    listen: Annotated[float, typer.Option("--listen", min=0, help="With --fleet: seconds to wait for more.")] = 3.0,
    broker: Annotated[str | None, typer.Option("--broker", help="With --fleet: mqtt://HOST:PORT.")] = None,
    include_errors: Annotated[
        bool, typer.Option("--include-errors", help="Keep requests that did not finish with status 200.")
    ] = False,
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="Keep repeated prompts.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn logged (already PII-redacted) traffic into a prompts dataset for the next distillation or fine-tune.

    Each record keeps the request's 'messages' or 'prompt', so `slmops generate --input` reads it.

    With --fleet, the redacted records the fleet's agents shared since the last call (the broker
    keeps them for this store's collector session) are added to $SLMOPS_HOME/fleet/logs/FLEET.jsonl
    and read too.

    Example: slmops data from-logs requests.jsonl --output prompts.jsonl
    """
    from slmops.errors import SlmopsError
    from slmops.serve.reqlog import write_prompts

    paths = list(logs or [])
    shared = None
    if fleet:
        from slmops.cli.common import open_store
        from slmops.fleet import addresses
        from slmops.fleet import logs as fleet_logs

        home = open_store().home
        shared = fleet_logs.collect(addresses.broker(broker, home=home), fleet, home, listen_s=listen)
        if Path(str(shared["file"])).exists():
            paths.append(Path(str(shared["file"])))
    if not paths:
        raise SlmopsError("no request logs to read.", "Give log files, or --fleet NAME for the fleet's shared logs.")
    count = write_prompts(paths, output, only_ok=not include_errors, dedupe=not keep_duplicates)
    if as_json:
        print_json({"records": count, "output": str(output), **({"fleet": shared} if shared else {})})
    else:
        if shared:
            console.print(f"{shared['records']} new record(s) from {shared['devices']} device(s) of fleet {fleet}")
        console.print(f"wrote {count} prompts to {output}")
