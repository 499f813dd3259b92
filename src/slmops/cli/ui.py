"""``slmops ui``: the web console."""

from __future__ import annotations

from typing import Annotated

import typer

from slmops.cli.common import open_store, status


def ui(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --api-key.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="SLMOPS_UI_API_KEY",
                     help="Key that signs in for actions (aliases, canary weights, roll-outs); env SLMOPS_UI_API_KEY."),
    ] = None,
    serve: Annotated[
        list[str] | None,
        typer.Option("--serve", help="A `slmops serve` endpoint to watch, e.g. http://127.0.0.1:8000 (repeatable)."),
    ] = None,
    serve_api_key: Annotated[
        str | None,
        typer.Option("--serve-api-key", envvar="SLMOPS_API_KEY",
                     help="The API key of those servers (for /metrics and canary weights); default: --api-key."),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="The fleet's MQTT broker, mqtt://HOST:PORT (default: $SLMOPS_BROKER, else what "
                                      "`fleet up` recorded)."),
    ] = None,
    fleet: Annotated[
        list[str] | None, typer.Option("--fleet", help="A fleet to show besides those with roll-outs (repeatable).")
    ] = None,
    refresh: Annotated[float, typer.Option("--refresh", min=0.2, max=60, help="Seconds between live chart updates.")]
    = 1.0,
) -> None:
    """A web console: models and their lineage, runs and their reports, evaluations with
    confidence intervals, live serving charts with canary weights, and the fleet: devices and
    roll-outs with pause / resume / abort / rollback (with --broker).

    Read-only pages need no key on loopback; changes need --api-key (sign in on the page), and
    a host other than loopback refuses to start without it. Every asset ships in the package.

    Example: slmops ui --serve http://127.0.0.1:8000 --api-key "$KEY"
    """
    from slmops.serve.runner import run
    from slmops.ui import UIConfig, create_ui_app

    config = UIConfig(host=host, port=port, api_key=api_key or None, serve=tuple(serve or ()),
                      serve_api_key=serve_api_key or None,
                      refresh_s=refresh, broker=broker, fleets=tuple(fleet or ()))
    app = create_ui_app(open_store(), config)
    status(f"console on http://{host}:{port}/ ({'actions need the API key' if api_key else 'read-only'};"
           f" watching {len(config.serve)} serve endpoint(s))")
    run(app, host=host, port=port, log_level="warning")
