"""``slmops agent run``: the process on every device."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import err_console

app = typer.Typer(help="The device agent: serve a model and follow the fleet's desired state.", no_args_is_help=True)


@app.command("run")
def run(
    device_id: Annotated[str, typer.Option("--device-id", help="This device's id (letters, digits, . _ -).")],
    fleet: Annotated[str, typer.Option("--fleet", help="The fleet it belongs to.")],
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", help="mqtt://HOST:PORT or mqtts://... [default: $SLMOPS_BROKER, else what `fleet up` recorded]"
        ),
    ] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="k=v,k2=v2 labels that roll-outs select on.")] = None,
    port: Annotated[int, typer.Option("--port", min=0, help="Port of the local OpenAI API (0 = any free).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address the API binds to.")] = "127.0.0.1",
    trust: Annotated[
        Path | None, typer.Option("--trust", help="Only run artifacts signed by this public key (path or key name).")
    ] = None,
    keep: Annotated[int, typer.Option("--keep", min=0, help="Previous versions kept on disk for rollback.")] = 2,
    report_interval: Annotated[
        float, typer.Option("--report-interval", min=0.05, help="Seconds between telemetry reports.")
    ] = 30.0,
    share_logs: Annotated[
        bool,
        typer.Option(
            "--share-logs",
            help="Publish redacted request logs to the broker (prompts never leave the device otherwise).",
        ),
    ] = False,
    home: Annotated[Path | None, typer.Option("--home", help="The agent's own store [default: $SLMOPS_HOME].")] = None,
    credentials: Annotated[
        Path | None, typer.Option("--credentials", help="Broker credentials file from `slmops fleet provision`.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA bundle for an mqtts:// broker.")] = None,
    min_free_bytes: Annotated[
        int,
        typer.Option("--min-free-bytes", min=0, help="Refuse a download that would leave less free disk than this."),
    ] = 0,
    download_rate_limit: Annotated[
        int | None, typer.Option("--download-rate-limit", min=1024, help="Most bytes/s to download (metered links).")
    ] = None,
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="Allow a plain-HTTP registry that is not on loopback.")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for inference.")] = None,
) -> None:
    """Serve the OpenAI API from the device's own store under the fleet's public model name,
    follow the desired state published for this device (pull by digest, verify, load beside
    the old version, probe, switch without dropping requests), keep previous versions for
    rollback, and report state and telemetry. Registry credentials come from
    SLMOPS_REGISTRY_USERNAME / SLMOPS_REGISTRY_PASSWORD.

    Example: slmops agent run --device-id kiosk-1 --fleet shops --broker mqtt://127.0.0.1:1883 --labels site=paris
    """
    import logging

    from slmops.fleet import addresses, control
    from slmops.fleet.agent import Agent, AgentConfig
    from slmops.models.store import default_home

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("slmops.agent").setLevel(logging.INFO)
    home = (home or default_home()).expanduser()
    cfg = AgentConfig(
        device_id=device_id,
        fleet=fleet,
        broker=addresses.broker(broker, home=home, ca_file=ca_file, credentials=credentials),
        labels=control.parse_labels(labels),
        home=home,
        host=host,
        port=port,
        trust=trust,
        keep=keep,
        report_interval=report_interval,
        share_logs=share_logs,
        min_free_bytes=min_free_bytes,
        download_rate_limit=download_rate_limit,
        plain_http=plain_http,
        threads=threads,
    )
    agent = Agent(cfg)
    agent.start()
    err_console.print(f"agent {fleet}/{device_id} serving on {agent.url}, broker {cfg.broker.url}", highlight=False)

    def _stop(*_: object) -> None:
        agent.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run_forever()
    finally:
        agent.stop()
