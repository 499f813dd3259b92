"""``slmops rollout ...`` (staged roll-outs with automatic rollback) and the ``fleet status`` and
``fleet simulate`` commands."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from slmops.cli.common import JsonOpt, console, err_console, field_option, open_store, print_json, status
from slmops.errors import SlmopsError
from slmops.fleet import rollouts
from slmops.fleet.rollouts import RolloutConfig
from slmops.fleet.rollstore import RolloutRecord, RolloutStore

app = typer.Typer(help="Staged roll-outs to a fleet, gated on what the devices measure, with automatic rollback.",
                  no_args_is_help=True)

BrokerOpt = Annotated[str | None, typer.Option(
    "--broker", help="MQTT broker mqtt://HOST:PORT (default: $SLMOPS_BROKER, else what `fleet up` recorded).")]
FleetOpt = Annotated[str, typer.Option("--fleet", help="Fleet name.")]
IdArg = Annotated[str, typer.Argument(help="Roll-out id.")]


def _home() -> Path:
    return open_store().home


def _short(digest: str | None) -> str:
    return digest[7:19] if digest and digest.startswith("sha256:") else (digest or "-")


def _gate_line(rec: RolloutRecord) -> str:
    if not rec.gates:
        return "-"
    g = rec.gates[-1]
    first = g["results"][0] if g.get("results") else {}
    return f"wave {g['wave']}: {'passed' if g['passed'] else 'FAILED'}: {first.get('evaluated', '')}"


def _render(rec: RolloutRecord) -> Table:
    t = Table(title=f"roll-out {rec.id} ({rec.fleet})", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("status", rec.status + (f" ({rec.reason})" if rec.reason else ""))
    t.add_row("model", f"{rec.target.source or rec.target.reference} {_short(rec.target.digest)}")
    t.add_row("wave", f"{rec.wave + 1}/{len(rec.cuts)} {rec.phase}  (cumulative devices {rec.cuts})")
    t.add_row("devices", f"{len(rec.touched)}/{len(rec.order)} touched"
              + (f", {len(rec.unavailable)} unavailable" if rec.unavailable else ""))
    t.add_row("gate", rec.gate)
    t.add_row("last gate", _gate_line(rec))
    for e in rec.events[-6:]:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["text"])
    return t


def _watch(home: Path, rollout_id: str, until_done: bool = True) -> RolloutRecord:
    rstore = RolloutStore(home)
    rec = rstore.load(rollout_id)
    orphan_since: float | None = None
    with Live(_render(rec), console=err_console, refresh_per_second=2, transient=False) as live:
        while not rec.done and not (rec.status == "paused" and until_done):
            time.sleep(0.5)
            rec = rstore.load(rollout_id)
            live.update(_render(rec))
            if rstore.lease_holder(rec.fleet) is None and not rec.done and rec.status != "paused":
                orphan_since = orphan_since or time.monotonic()
                if time.monotonic() - orphan_since > 30:
                    raise SlmopsError(f"roll-out {rec.id} has no running controller (see "
                                      f"{rstore.dir / (rec.id + '.log')}).", hint=f"`slmops rollout resume {rec.id}`.")
            else:
                orphan_since = None
    return rec


def _show(rec: RolloutRecord, as_json: bool) -> None:
    """A roll-out in full: its record (``--json``) or the table."""
    if as_json:
        print_json(rec.model_dump(exclude={"order", "labels", "previous", "generation"}))
    else:
        console.print(_render(rec))


def _changed(rec: RolloutRecord, as_json: bool, line: str) -> None:
    """What a pause, resume, abort or rollback left: the summary (``--json``) or one line."""
    if as_json:
        print_json(rec.summary())
    else:
        console.print(line)


def _outcome(rec: RolloutRecord, as_json: bool) -> None:
    _show(rec, as_json)
    if rec.status == "failed":
        raise rollouts.RolloutFailed(rec)


@app.command("start")
def start(
    fleet: str = field_option(RolloutConfig, "fleet"),
    model: str = field_option(RolloutConfig, "model"),
    gate: str = field_option(RolloutConfig, "gate"),
    waves: str = field_option(RolloutConfig, "waves"),
    bake: str = field_option(RolloutConfig, "bake"),
    select: str | None = field_option(RolloutConfig, "select"),
    max_unavailable: str = field_option(RolloutConfig, "max_unavailable"),
    on_missing_data: str = field_option(RolloutConfig, "on_missing_data"),
    timeout: str = field_option(RolloutConfig, "timeout"),
    per_label: Annotated[bool, typer.Option("--per-label/--no-per-label", help=RolloutConfig.model_fields[
        "per_label"].description)] = True,
    report_interval: float | None = field_option(RolloutConfig, "report_interval"),
    served_name: str | None = field_option(RolloutConfig, "served_name"),
    registry: str | None = field_option(RolloutConfig, "registry"),
    trust: Path | None = field_option(RolloutConfig, "trust"),
    broker: str | None = field_option(RolloutConfig, "broker"),
    wait: Annotated[bool, typer.Option("--wait", help="Block until the roll-out ends, showing its progress.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll a model out to a fleet wave by wave; a failed gate rolls every touched device back.

    Returns once the roll-out is recorded and its controller (its own process) is under way.

    Example: slmops rollout start --fleet shop --model student:3 --bake 2m --gate 'probe_score >= 70'
    """
    store = open_store()
    config = RolloutConfig(fleet=fleet, model=model, gate=gate, waves=waves, bake=bake, select=select,
                           max_unavailable=max_unavailable, on_missing_data=on_missing_data, timeout=timeout,
                           per_label=per_label, report_interval=report_interval, served_name=served_name,
                           registry=registry, trust=trust, broker=broker)
    rec = config.start(store=store, progress=status)
    if wait:
        rec = _watch(store.home, rec.id)
        _outcome(rec, as_json)
        return
    if as_json:
        print_json(rec.summary())
    else:
        console.print(f"roll-out [bold]{rec.id}[/bold] started: {len(rec.order)} device(s) in {len(rec.cuts)} "
                      f"wave(s) {rec.cuts}; follow it with `slmops rollout status {rec.id} --watch`.")


@app.command("status")
def status_cmd(
    rollout_id: Annotated[str | None, typer.Argument(help="Roll-out id (default: the latest, of --fleet).")] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Latest roll-out of this fleet.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a roll-out: status, wave and phase, devices touched, the last gate and recent events.

    Example: slmops rollout status --fleet shop --watch
    """
    home = _home()
    rec = rollouts.find(home, rollout_id, fleet)
    if watch:
        rec = _watch(home, rec.id)
    _show(rec, as_json)


@app.command("list")
def list_cmd(fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
             as_json: JsonOpt = False) -> None:
    """List roll-outs, oldest first.

    Example: slmops rollout list --fleet shop
    """
    recs = RolloutStore(_home()).list(fleet)
    if as_json:
        print_json([r.summary() for r in recs])
        return
    t = Table(title="roll-outs")
    for col in ("id", "fleet", "status", "model", "wave", "devices", "last gate"):
        t.add_column(col, no_wrap=col in ("id", "status"))
    for r in recs:
        t.add_row(r.id, r.fleet, r.status, r.target.source or _short(r.target.digest), f"{r.wave + 1}/{len(r.cuts)}",
                  f"{len(r.touched)}/{len(r.order)}", _gate_line(r))
    console.print(t)


@app.command("pause")
def pause_cmd(rollout_id: IdArg, as_json: JsonOpt = False) -> None:
    """Pause a running roll-out where it is (its controller stops; `resume` continues it).

    Example: slmops rollout pause ro-20260101-120000-ab12
    """
    rec = rollouts.pause(_home(), rollout_id)
    _changed(rec, as_json, f"roll-out {rec.id} paused at wave {rec.wave + 1}.")


@app.command("resume")
def resume_cmd(
    rollout_id: IdArg,
    broker: BrokerOpt = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Run the controller in this process.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resume a paused roll-out, or restart the controller of one whose controller died.

    Example: slmops rollout resume ro-20260101-120000-ab12
    """
    home = _home()
    b = rollouts.find_broker(broker, home)
    if foreground:
        rec = rollouts.find(home, rollout_id)
        if rec.status == "paused":
            rollouts.resume(home, rollout_id, b, spawn=False)
        rec = rollouts.drive(home, rollout_id, b)
        status(f"controller of {rec.id} stops: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""))
        return
    rec = rollouts.resume(home, rollout_id, b)
    _changed(rec, as_json,
             f"roll-out {rec.id} {rec.status} at wave {rec.wave + 1}/{len(rec.cuts)}; its controller runs.")


@app.command("abort")
def abort_cmd(rollout_id: IdArg, broker: BrokerOpt = None,
              as_json: JsonOpt = False) -> None:
    """Stop a roll-out where it is: devices already on the new version keep it; touched devices
    not on it yet (offline, downloading) go back to their previous version.

    Example: slmops rollout abort ro-20260101-120000-ab12
    """
    from slmops.fleet.view import FleetView

    home = _home()
    rec = rollouts.find(home, rollout_id)
    view = FleetView(rollouts.find_broker(broker, home), rec.fleet).start()
    try:
        if not view.wait_synced(timeout=10):
            raise SlmopsError(f"cannot reach the MQTT broker at {view.broker.url}; nothing was changed.")
        rec = rollouts.abort(home, rollout_id, io=view)
    finally:
        view.close()
    _changed(rec, as_json, f"roll-out {rec.id} aborted; {len(rec.touched)} device(s) keep the new version.")


@app.command("rollback")
def rollback_cmd(
    rollout_id: IdArg,
    broker: BrokerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until every device is back.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put every device the roll-out touched back on its previous version.

    Example: slmops rollout rollback ro-20260101-120000-ab12 --wait
    """
    home = _home()
    rec = rollouts.rollback(home, rollout_id, rollouts.find_broker(broker, home))
    if wait:
        rec = _watch(home, rec.id)
    _changed(rec, as_json, f"roll-out {rec.id}: {rec.status}, {len(rec.touched)} device(s) going back.")


# -- fleet status / fleet simulate (registered on the `fleet` group) ----------------------------
def fleet_status(
    fleet: FleetOpt,
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a fleet: devices per version, offline and failed counts, running roll-outs with
    their wave and last gate values.

    Example: slmops fleet status --fleet shop --json
    """
    home = _home()
    data = rollouts.fleet_status(home, rollouts.find_broker(broker, home), fleet)
    if as_json:
        print_json(data)
        return
    console.print(f"fleet [bold]{fleet}[/bold]: {data['devices']} device(s), {data['online']} online, "
                  f"{data['offline']} offline, {data['failed']} failed")
    t = Table(title="versions")
    t.add_column("digest")
    t.add_column("devices", justify="right")
    for digest, n in data["versions"].items():
        t.add_row(_short(digest), str(n))
    console.print(t)
    for r in data["rollouts"] + ([data["last_rollout"]] if data["last_rollout"] else []):
        g = r.get("last_gate") or {}
        first = (g.get("results") or [{}])[0]
        console.print(f"roll-out {r['id']}: {r['status']}, wave {r['wave']}/{r['waves']} {r['phase']}, "
                      f"{r['touched']}/{r['devices']} touched; last gate: {first.get('evaluated', '-')}"
                      + (f"; {r['reason']}" if r.get("reason") else ""))


def fleet_simulate(
    fleet: FleetOpt,
    devices: Annotated[int, typer.Option("--devices", min=1, help="How many simulated devices.")] = 1000,
    faults: Annotated[list[str] | None, typer.Option(
        "--fault", help="KIND:VALUE, optionally @k=v and /DIGEST; kinds probe latency errors download offline flap.")]
    = None,
    labels: Annotated[str, typer.Option("--labels", help="Labels spread over the devices: k=v1|v2,k2=...")]
    = "zone=a|b|c",
    report_interval: Annotated[float, typer.Option("--report-interval", help="Telemetry every N seconds.")] = 2.0,
    download: Annotated[str, typer.Option("--download", help="Download delay range in seconds: LOW-HIGH.")] = "1-3",
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after N seconds (default: Ctrl-C).")]
    = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Device ids are PREFIX-0000, PREFIX-0001, ...")] = "sim",
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a SIMULATED fleet: devices in one process speaking the agent's MQTT protocol (state,
    telemetry, following desired states with download and probe delays), no model loaded.

    Example: slmops fleet simulate --fleet demo --devices 1000 --fault probe:-20@zone=b
    """
    from slmops.fleet.simulator import Simulator, parse_fault, parse_labels

    home = _home()
    low, _, high = download.partition("-")
    try:
        span = (float(low), float(high or low))
    except ValueError:
        raise SlmopsError(f"--download {download!r}: write LOW-HIGH seconds, e.g. 1-3.") from None
    sim = Simulator(rollouts.find_broker(broker, home), fleet, devices, labels=parse_labels(labels),
                    faults=[parse_fault(f) for f in faults or []], report_interval=report_interval,
                    download_s=span, prefix=prefix)
    sim.start()
    status(f"simulating {devices} device(s) of fleet {fleet!r} (a simulation: no model is loaded); Ctrl-C stops")
    stop = threading.Event()
    try:
        sim.run(stop, duration=duration)
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    summary: dict[str, Any] = sim.summary()
    if as_json:
        print_json(summary)
    else:
        console.print(f"simulated {summary['devices']} device(s): versions "
                      + ", ".join(f"{_short(k)}={v}" for k, v in summary["versions"].items()))
