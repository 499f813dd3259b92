"""``slmops serve``: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import ThreadsOpt, open_store, status


def serve(
    refs: Annotated[
        list[str] | None,
        typer.Argument(help="Models to load at start-up (name, name:version, name@alias, path); others load on use."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="SLMOPS_API_KEY", help="Require 'Authorization: Bearer KEY' (env SLMOPS_API_KEY)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, help="Requests decoded together per model.")
    ] = 8,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Waiting requests per model before 429s.")] = 64,
    max_tokens_cap: Annotated[
        int, typer.Option("--max-tokens-cap", min=1, help="Largest max_tokens a request may ask.")
    ] = 2048,
    memory_budget_mb: Annotated[
        float, typer.Option("--memory-budget-mb", min=1, help="Unload least recently used models beyond this.")
    ] = 4096,
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="Allow browser calls from this origin (repeatable).")
    ] = None,
    request_log: Annotated[
        Path | None,
        typer.Option("--request-log", help="Append PII-redacted JSONL request logs here (rotated by size)."),
    ] = None,
    canary: Annotated[
        list[str] | None,
        typer.Option("--canary", help="Split a public name across versions: NAME=REF:WEIGHT,REF:WEIGHT (repeatable)."),
    ] = None,
    precision: Annotated[
        str,
        typer.Option("--precision", help="auto: a built-in model named at start-up serves its int4 ONNX variant."),
    ] = "auto",
    threads: ThreadsOpt = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="Serve /openapi.json and the /docs page.")] = True,
) -> None:
    """Serve models behind an OpenAI-compatible API (chat and text completions, streaming, /metrics).

    The 'model' field of a request routes to store models: name, name:version, name@alias or
    base+adapter; models load on first use. --canary splits one public name across versions
    (sticky per 'user'; the x-slmops-model-version header says which served; PUT /admin/routes/NAME
    re-weights it at run time, with the API key). /openapi.json describes the API and /docs is an
    interactive page for it (served offline; --no-docs turns both off). A built-in model named
    at start-up without a version serves its int4 ONNX variant (built once, registered with
    lineage) under the name asked for; --precision fp32 or an exact version serves the original.

    Example: slmops serve smollm2-135m-instruct --port 8000
    """
    from slmops.models.variants import check_precision, fast_variant
    from slmops.serve import ServeConfig, create_app
    from slmops.serve.canary import parse_route
    from slmops.serve.runner import run

    check_precision(precision)
    store = open_store()
    models, routes = [], dict(parse_route(spec) for spec in canary or ())
    for ref in refs or ():
        variant = fast_variant(ref, store, precision=precision, progress=status)
        models.append(variant.ref)
        if variant.ref != ref and ref not in routes:
            routes[ref] = {variant.ref: 100.0}  # requests naming the built-in model get the variant
            status(variant.note)
    config = ServeConfig(
        models=tuple(models),
        host=host,
        port=port,
        api_key=api_key,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        max_tokens_cap=max_tokens_cap,
        memory_budget_mb=memory_budget_mb,
        cors_origins=tuple(cors_origin or ()),
        request_log=request_log,
        threads=threads,
        routes=routes,
        docs=docs,
    )
    app = create_app(store, config)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        status(f"warning: serving on {host} without --api-key; anyone who can reach it can use it")
    status(f"serving on http://{host}:{port}/v1 (models: {', '.join(config.models) or 'loaded on first use'})")
    run(app, host=host, port=port)
