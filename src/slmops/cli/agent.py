"""``slmops agent run``: the process on every device."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from slmops.cli.common import err_console, field_option
from slmops.fleet.agent_config import AgentConfig

app = typer.Typer(help="The device agent: serve a model and follow the fleet's desired state.", no_args_is_help=True)


@app.command("run")
def run(
    device_id: str = field_option(AgentConfig, "device_id"),
    fleet: str = field_option(AgentConfig, "fleet"),
    broker: str | None = field_option(AgentConfig, "broker", default=None),
    labels: str | None = field_option(AgentConfig, "labels", default=None),
    port: int = field_option(AgentConfig, "port"),
    host: str = field_option(AgentConfig, "host"),
    trust: Path | None = field_option(AgentConfig, "trust"),
    keep: int = field_option(AgentConfig, "keep"),
    report_interval: float = field_option(AgentConfig, "report_interval"),
    share_logs: bool = field_option(AgentConfig, "share_logs"),
    home: Path | None = field_option(AgentConfig, "home"),
    credentials: Annotated[
        Path | None, typer.Option("--credentials", help="Broker credentials file from `slmops fleet provision`.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA bundle for an mqtts:// broker.")] = None,
    min_free_bytes: int = field_option(AgentConfig, "min_free_bytes"),
    download_rate_limit: int | None = field_option(AgentConfig, "download_rate_limit"),
    plain_http: bool = field_option(AgentConfig, "plain_http"),
    threads: int | None = field_option(AgentConfig, "threads"),
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
    from slmops.fleet.agent import Agent
    from slmops.models.store import default_home

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("slmops.agent").setLevel(logging.INFO)
    home = (home or default_home()).expanduser()
    options = {k: v for k, v in locals().items() if k in AgentConfig.model_fields}
    options.update(broker=addresses.broker(broker, home=home, ca_file=ca_file, credentials=credentials),
                   labels=control.parse_labels(labels))  # fmt: skip
    cfg = AgentConfig(**options)
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
