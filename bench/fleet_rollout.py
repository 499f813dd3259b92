"""Benchmark: staged roll-outs to a SIMULATED fleet on a real Mosquitto broker.

Three scenarios in one run, each on its own fleet of ``--devices`` simulated devices (one
process, one MQTT client; telemetry every ``--report-interval`` s, downloads of 1-3 s, probes of
0.5 s), waves 1/10%/50%/100%, ``--bake`` s per wave, the roll-out controller as its own process:

* good: a version as good as the old one goes out to every device. Target: the whole roll-out
  within 2 minutes plus the bake times; the controller below one core on average (its CPU time
  over its wall time, from ``getrusage`` in the controller process).
* bad: a version whose probe score is 20 points lower on every device. Target: caught in wave 1,
  no device outside wave 1 ever receives it, every wave-1 device back within 30 s of the gate.
* thirty: 20 points lower only on the 30% of devices with ``zone=a``. Target: caught at the 10%
  wave at the latest.

The peer of the roll-out time is its budget (120 s + bakes), measured in the same run: the
script prints budget / time as the ratio, a table, and as the last line one JSON object.

    .venv/bin/python bench/fleet_rollout.py                  # 1,000 devices, 10 s bake
    .venv/bin/python bench/fleet_rollout.py --devices 200 --bake 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GATE = "probe_score >= baseline.probe_score - 5 and p95_ms <= 1.3 * baseline.p95_ms"


def _controller(home: str, rollout_id: str, broker_url: str, out: str) -> None:
    """Child mode: drive one roll-out, then write the controller's own CPU and wall time."""
    from slmops.fleet import mqtt, rollouts

    start_wall = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    rec = rollouts.drive(Path(home), rollout_id, mqtt.parse_broker(broker_url), tick_s=0.25)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    Path(out).write_text(json.dumps({"status": rec.status, "cpu_s": cpu, "wall_s": time.monotonic() - start_wall}))


def _scenario(name: str, broker_url: str, home: Path, devices: int, bake: float, interval: float,
              faults: list[str], labels: str) -> dict[str, Any]:
    from slmops.fleet import mqtt
    from slmops.fleet.rollout import plan
    from slmops.fleet.rollstore import RolloutStore, Target
    from slmops.fleet.simulator import Simulator, parse_fault, parse_labels
    from slmops.fleet.view import snapshot

    broker = mqtt.parse_broker(broker_url)
    fleet = f"bench-{name}"
    sim = Simulator(broker, fleet, devices, labels=parse_labels(labels), faults=[parse_fault(f) for f in faults],
                    report_interval=interval, download_s=(1.0, 3.0), probe_s=0.5).start().run_in_thread()
    try:
        time.sleep(interval * 1.5)  # a first telemetry window from everyone
        new = "sha256:" + hashlib.sha256(f"{fleet} new version".encode()).hexdigest()
        target = Target(reference=f"oci://127.0.0.1:5000/{fleet}@{new}", digest=new, format="gguf",
                        served_name=fleet, source=f"{fleet}:2")
        rec = plan(fleet, target, snapshot(broker, fleet, timeout=30), waves="1,10%,50%,100%", bake_s=bake,
                   gate=GATE, activate_timeout_s=60)
        store = RolloutStore(home)
        store.create(rec)
        cpu_file = home / f"{name}.cpu.json"
        t0 = time.monotonic()
        subprocess.run([sys.executable, __file__, "--controller", str(home), rec.id, broker_url, str(cpu_file)],
                       check=True, env={**os.environ, "SLMOPS_HOME": str(home)})
        total = time.monotonic() - t0
        out = store.load(rec.id)
        ctl = json.loads(cpu_file.read_text())
        received = {d.id for d in sim.devices.values() if new in d.known}
        wave1 = set(out.wave_devices(0))
        failed_wave = out.gates[-1]["wave"] if out.status == "failed" else None
        back_s = (out.finished_at - out.rollback_started_at) if out.rollback_started_at and out.finished_at else None
        summary = sim.summary()
        return {
            "scenario": name, "devices": devices, "status": out.status, "waves": out.cuts, "total_s": round(total, 1),
            "controller_cpu_s": round(ctl["cpu_s"], 2), "controller_wall_s": round(ctl["wall_s"], 1),
            "controller_cores": round(ctl["cpu_s"] / max(ctl["wall_s"], 1e-9), 3),
            "failed_wave": failed_wave, "reason": out.reason,
            "received_new": len(received), "received_outside_wave1": len(received - wave1),
            "received_outside_first_two_waves": len(received - set(out.order[:out.cuts[1]])),
            "rollback_s": None if back_s is None else round(back_s, 2),
            "devices_on_new_at_end": summary["versions"].get(new, 0),
            "messages_published_by_simulator": summary["published"],
        }
    finally:
        sim.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--bake", type=float, default=10.0)
    ap.add_argument("--report-interval", type=float, default=2.0)
    ap.add_argument("--only", choices=("good", "bad", "thirty"), action="append")
    ap.add_argument("--controller", nargs=4, metavar=("HOME", "ID", "BROKER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.controller:
        _controller(*args.controller)
        return

    from slmops.fleet import services

    tmp = Path(tempfile.mkdtemp(prefix="fleet-rollout-bench-"))
    svc, proc = services.start_mosquitto(tmp / "mosquitto")
    load = os.getloadavg()
    rows = []
    try:
        plans = {"good": ([], "zone=a|b|c"), "bad": (["probe:-20"], "zone=a|b|c"),
                 "thirty": (["probe:-20@zone=a"], "zone=a|a|a|b|b|b|b|c|c|c")}
        for name, (faults, labels) in plans.items():
            if args.only and name not in args.only:
                continue
            print(f"-- {name}: {args.devices} simulated devices, faults {faults or 'none'}", file=sys.stderr)
            rows.append(_scenario(name, svc.url, tmp / "home", args.devices, args.bake, args.report_interval,
                                  faults, labels))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    budget = 120 + 4 * args.bake
    result: dict[str, Any] = {
        "bench": "fleet_rollout", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "load_avg_at_start": [round(x, 2) for x in load],
        "devices": args.devices, "bake_s": args.bake, "report_interval_s": args.report_interval,
        "budget_s": budget, "scenarios": rows,
    }
    print(f"{'scenario':<8} {'status':<10} {'time s':>7} {'ctl cores':>9} {'failed wave':>11} "
          f"{'got it':>7} {'outside w1':>10} {'back s':>7}")
    for r in rows:
        print(f"{r['scenario']:<8} {r['status']:<10} {r['total_s']:>7} {r['controller_cores']:>9} "
              f"{str(r['failed_wave']):>11} {r['received_new']:>7} {r['received_outside_wave1']:>10} "
              f"{str(r['rollback_s']):>7}")
    good = next((r for r in rows if r["scenario"] == "good"), None)
    bad = next((r for r in rows if r["scenario"] == "bad"), None)
    thirty = next((r for r in rows if r["scenario"] == "thirty"), None)
    targets = {}
    if good:
        result["ratio_budget_over_time"] = round(budget / good["total_s"], 2)
        targets["good_within_budget"] = good["status"] == "succeeded" and good["total_s"] <= budget
        targets["controller_below_one_core"] = good["controller_cores"] < 1.0
        print(f"good roll-out: {good['total_s']} s vs budget {budget:.0f} s (2 min + bakes): "
              f"{result['ratio_budget_over_time']}x headroom; controller {good['controller_cores']} cores")
    if bad:
        targets["bad_caught_in_wave1"] = bad["failed_wave"] == 1 and bad["received_outside_wave1"] == 0
        targets["bad_back_within_30s"] = bad["rollback_s"] is not None and bad["rollback_s"] <= 30
    if thirty:
        targets["thirty_caught_by_10pct_wave"] = (thirty["failed_wave"] or 99) <= 2 and \
            thirty["received_outside_first_two_waves"] == 0
    result["targets"] = targets
    print("targets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
