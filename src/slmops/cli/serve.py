"""``slmops serve``: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import field_option, open_store, status
from slmops.serve.config import ServeConfig


def serve(
    refs: Annotated[
        list[str] | None,
        typer.Argument(help="Models to load at start-up (name, name:version, name@alias, path); others load on use."),
    ] = None,
    host: str = field_option(ServeConfig, "host"),
    port: int = field_option(ServeConfig, "port", max=65535),
    api_key: str | None = field_option(ServeConfig, "api_key", envvar="SLMOPS_API_KEY"),
    max_batch_size: int = field_option(ServeConfig, "max_batch_size"),
    max_queue: int = field_option(ServeConfig, "max_queue"),
    max_tokens_cap: int = field_option(ServeConfig, "max_tokens_cap"),
    memory_budget_mb: float = field_option(ServeConfig, "memory_budget_mb", min=1),
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="Allow browser calls from this origin (repeatable).")
    ] = None,
    request_log: Path | None = field_option(ServeConfig, "request_log"),
    canary: Annotated[
        list[str] | None,
        typer.Option("--canary", help="Split a public name across versions: NAME=REF:WEIGHT,REF:WEIGHT (repeatable)."),
    ] = None,
    precision: Annotated[
        str,
        typer.Option("--precision", help="auto: a built-in model named at start-up serves its int4 ONNX variant."),
    ] = "auto",
    threads: int | None = field_option(ServeConfig, "threads"),
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help=ServeConfig.model_fields["docs"].description)] = True,
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
    from slmops.optimize.variants import check_precision, fast_variant
    from slmops.serve import create_app
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
