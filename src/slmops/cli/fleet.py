"""``slmops fleet ...``: local fleet services, per-device credentials, assigning models and
listing what the devices report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, open_store, print_json, status

app = typer.Typer(
    help="Run a fleet: broker and registry, device credentials, assign models, list devices.", no_args_is_help=True
)

BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="mqtt://HOST:PORT [default: $SLMOPS_BROKER, else what `fleet up` recorded]"),
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry", help="HOST:PORT of the OCI registry [default: $SLMOPS_REGISTRY, else what `fleet up` recorded]"
    ),
]
FleetOpt = Annotated[str, typer.Option("--fleet", help="Fleet name.")]


@app.command("up")
def up(
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Refuse anonymous clients: devices need "
            "`fleet provision` credentials, each limited to its own topics.",
        ),
    ] = False,
    broker_port: Annotated[int | None, typer.Option("--broker-port", help="MQTT port [default: a free one].")] = None,
    registry_port: Annotated[
        int | None, typer.Option("--registry-port", help="Registry port [default: a free one].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a local Mosquitto broker and a CNCF Distribution registry on loopback (data under
    $SLMOPS_HOME/fleet/), record their addresses for every other fleet command and print them.
    Running it again finds the running ones.

    Example: slmops fleet up --json
    """
    from slmops.fleet import provision, services

    home = open_store().home
    auth = services.fleet_dir(home) / "auth"
    kw = {}
    if secure:
        provision.ensure_admin(auth)
        kw = {"password_file": auth / "passwd", "acl_file": auth / "acl"}
    running = services.up(home, broker_port=broker_port, registry_port=registry_port, **kw)
    out = {
        "broker": running["broker"].url,
        "registry": running["registry"].url,
        "secure": secure,
        "folder": str(services.fleet_dir(home)),
    }
    if as_json:
        print_json(out)
    else:
        console.print(
            f"broker   {out['broker']}\nregistry {out['registry']}\ndata     {out['folder']}", highlight=False
        )


@app.command("down")
def down(as_json: JsonOpt = False) -> None:
    """Stop the broker and registry `fleet up` started (their data stays).

    Example: slmops fleet down
    """
    from slmops.fleet import services

    stopped = services.down(open_store().home)
    if as_json:
        print_json({"stopped": stopped})
    else:
        console.print(
            ", ".join(f"{k} {'stopped' if v else 'was not running'}" for k, v in stopped.items())
            or "nothing was running"
        )


@app.command("provision")
def provision_cmd(
    device_id: Annotated[str, typer.Argument(help="The device to make credentials for.")],
    fleet: FleetOpt,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the credentials file [default: $SLMOPS_HOME/fleet/auth/devices/FLEET/DEVICE.json].",
        ),
    ] = None,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a device's broker user (password hashed into the broker's password file) and ACL
    entries: it may read only its own desired state and write only its own state, telemetry,
    availability and logs topics. A broker `fleet up --secure` started re-reads them at once.
    Copy the credentials file to the device: `agent run --credentials FILE`.

    Example: slmops fleet provision kiosk-1 --fleet shops
    """
    from slmops.fleet import provision, services

    home = open_store().home
    recorded = services.read_recorded(home).get("broker")
    url = broker or (recorded.url if recorded else None)
    path = provision.provision(services.fleet_dir(home) / "auth", fleet, device_id, broker_url=url, out=out)
    reloaded = False
    if recorded is not None and services.is_running(recorded):
        services.reload(recorded)
        reloaded = True
    if as_json:
        print_json({"device_id": device_id, "fleet": fleet, "credentials": str(path), "broker_reloaded": reloaded})
    else:
        console.print(
            f"credentials for {fleet}/{device_id}: {path} (mode 0600)" + ("; broker reloaded" if reloaded else ""),
            highlight=False,
        )


@app.command("assign")
def assign(
    fleet: FleetOpt,
    model: Annotated[
        str,
        typer.Option(
            "--model", help="oci://HOST/REPO:TAG|@sha256:..., or a store reference (pushed to the registry first)."
        ),
    ],
    devices: Annotated[str | None, typer.Option("--devices", help="Comma-separated device ids.")] = None,
    select: Annotated[str | None, typer.Option("--select", help="k=v,... : every device with these labels.")] = None,
    served_name: Annotated[
        str | None,
        typer.Option("--served-name", help="The public model name devices serve it under [default: the model's name]."),
    ] = None,
    rollout: Annotated[
        str | None, typer.Option("--rollout", help="Roll-out id recorded with the desired state.")
    ] = None,
    sign: Annotated[Path | None, typer.Option("--sign", help="Sign a store model pushed here with this key.")] = None,
    broker: BrokerOpt = None,
    registry: RegistryOpt = None,
    plain_http: Annotated[bool, typer.Option("--plain-http", help="Allow a plain-HTTP registry off loopback.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set the desired model of some devices (retained, generation + 1 per device). Each agent
    then pulls, verifies, probes and switches on its own; watch with `fleet devices`.

    Example: slmops fleet assign --fleet shops --model support-bot:3 --select site=paris
    """
    from slmops.errors import SlmopsError
    from slmops.fleet import addresses, control
    from slmops.fleet.publish import publish

    if bool(devices) == bool(select):
        raise SlmopsError("name the devices with exactly one of --devices ID,... or --select k=v,...")
    store = open_store()
    b = addresses.broker(broker, home=store.home)
    known = control.devices(b, fleet)
    if devices:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
    else:
        ids = control.select(known, control.parse_labels(select))
        if not ids:
            raise SlmopsError(
                f"no device of fleet {fleet!r} has the labels {select}.",
                "`slmops fleet devices --fleet NAME` lists devices and labels.",
            )
    pub = publish(
        store, model, registry=addresses.registry(registry, home=store.home), sign_key=sign, plain_http=plain_http
    )
    if pub.pushed:
        status(f"pushed {model} as {pub.reference}")
    out = control.assign(
        b,
        fleet,
        ids,
        reference=pub.reference,
        digest=pub.digest,
        format=pub.format,
        served_name=served_name or pub.name,
        rollout=rollout,
        known=known,
    )
    if as_json:
        print_json(
            {
                "reference": pub.reference,
                "digest": pub.digest,
                "pushed": pub.pushed,
                "devices": {d: s.model_dump() for d, s in out.items()},
            }
        )
    else:
        console.print(f"assigned {pub.reference} to {len(out)} device(s): {', '.join(out)}", highlight=False)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


@app.command("devices")
def devices_cmd(
    fleet: FleetOpt,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Also listen this many seconds for telemetry (sent every report interval, not kept by the broker).",
        ),
    ] = 0.0,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every device of a fleet: labels, online, status (with the failure reason), active and
    desired digest, roll-out, last seen, and the last telemetry window heard.

    Example: slmops fleet devices --fleet shops --wait 5 --json
    """
    from slmops.fleet import addresses, control

    found = control.devices(addresses.broker(broker, home=open_store().home), fleet, wait_s=wait)
    if as_json:
        print_json([d.to_dict() for d in found])
        return
    if not found:
        console.print(f"[dim]No device of fleet {fleet!r} has reported yet.[/dim]")
        return
    table = Table(title=f"Fleet {fleet}")
    for col in (
        "device",
        "labels",
        "online",
        "status",
        "active",
        "desired",
        "rollout",
        "last seen",
        "req",
        "p95 ms",
        "probe",
    ):
        table.add_column(col, no_wrap=col in ("device", "active", "desired"))
    for d in found:
        row = d.to_dict()
        t = d.telemetry
        st = row["status"] or "-"
        if st == "failed" and row["reason"]:
            st = f"failed: {row['reason'][:60]}"
        table.add_row(
            d.device_id,
            ",".join(f"{k}={v}" for k, v in d.labels.items()),
            {True: "yes", False: "no", None: "-"}[d.online],
            st,
            (row["active_digest"] or "-")[7:19],
            (row["desired_digest"] or "-")[7:19],
            row["rollout"] or "-",
            _ago(row["last_seen"]),
            str(t.requests) if t else "-",
            f"{t.p95_ms:.0f}" if t and t.p95_ms is not None else "-",
            f"{t.probe_score:.2f}" if t and t.probe_score is not None else "-",
        )
    console.print(table)
