"""Benchmark: the device agent and the OCI transport, against their peers, in one run (issue 12).

Starts a real Mosquitto and a real CNCF Distribution registry on loopback (temporary folder),
then measures:

1. push + pull vs copy: ``models push`` of the model's files to the registry plus ``models pull``
   into a fresh store on the same disk, against ``shutil.copytree`` of the same files.
   Throughput = bytes / seconds. Target: push+pull >= 0.5x copy. Also the registry's own floor:
   the same files PUT and GET by ``curl`` into another repository (when curl is installed), so
   the share of the gap that is the registry's ingest, not our client, is measured in the run.
2. switch under load: an ``slmops agent run`` child process serves v1 to ``--clients`` (4)
   concurrent chat clients; v2 (the same weights plus one extra file, so another digest) is
   assigned; the agent downloads, verifies, loads, probes and switches while the load runs.
   Dropped requests (non-200 or broken connections) and p95 latency during the switch (assign
   -> "ok" + 1 s) against p95 before it. Targets: 0 dropped; p95 during <= 1.10x before.
3. idle cost: CPU of the idle agent (v1 loaded, no traffic) over ``--idle`` seconds, as % of one
   core (target < 2%); its resident memory against a plain ``slmops serve`` of the same model
   after one request each (target: <= +50 MB).

Model: ``--model REF`` from ``$SLMOPS_HOME`` (e.g. the demo's int4 student), else a tiny random
model built here. Prints each comparison with its ratio and, last, one JSON line.

    SLMOPS_HOME=~/.slmops .venv/bin/python bench/fleet_agent.py --model smollm2-int4
    .venv/bin/python bench/fleet_agent.py            # tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from slmops.fleet import control, mqtt, oci, services
from slmops.models.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent


def _slmops() -> list[str]:
    exe = Path(sys.executable).parent / "slmops"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slmops"]


def _p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=20)[-1]


def _curl_floor(registry: str, files: list[Path], work: Path) -> float | None:
    """Seconds for ``curl`` to upload (POST a session, PUT the file) and download every file
    to/from a fresh repository of ``registry``: the registry's floor for push + pull."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    total = 0.0
    with httpx.Client(base_url=f"http://{registry}", timeout=120) as http:
        for i, path in enumerate(files):
            digest = oci.sha256_file(path)
            t = time.perf_counter()
            r = http.post("/v2/curl-floor/blobs/uploads/")
            loc = r.headers["Location"]
            url = loc if loc.startswith("http") else f"http://{registry}{loc}"
            url += ("&" if "?" in url else "?") + f"digest={digest}"
            put = [curl, "-sf", "-o", "/dev/null", "-X", "PUT", "-T", str(path), url]
            put += ["-H", "Content-Type: application/octet-stream"]
            subprocess.run(put, check=True)
            get = [curl, "-sf", "-o", str(work / f"curl-{i}"), f"http://{registry}/v2/curl-floor/blobs/{digest}"]
            subprocess.run(get, check=True)
            total += time.perf_counter() - t
    return total


def _wait_state(broker: mqtt.Broker, fleet: str, device: str, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in control.devices(broker, fleet):
            if d.device_id == device and d.state is not None and pred(d.state):
                return d.to_dict()
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {device}")


def _copy_model(store: ModelStore, src_ref: str, name: str, extra: bytes | None) -> str:
    rec = store.get(src_ref)
    with store.staging() as staged:
        dst = staged / "model"
        shutil.copytree(rec.path, dst)
        if extra is not None:
            (dst / "fleet-bench.txt").write_bytes(extra)
        return store.add(dst, name, rec.format, parameters=rec.parameters).ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="store reference in $SLMOPS_HOME (default: a tiny random model)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--before", type=float, default=8.0, help="seconds of load before the switch")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of load after the switch")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="inference threads of the agent and of serve")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        mq_svc, mq = services.start_mosquitto(work / "mq")
        reg_svc, reg = services.start_registry(work / "reg")
        procs += [mq, reg]
        broker_url = mq_svc.url
        broker = mqtt.parse_broker(broker_url)
        src = ModelStore(work / "src")
        if args.model:
            home = ModelStore()
            rec = home.get(args.model)
            with src.staging() as staged:
                shutil.copytree(rec.path, staged / "model")
                src.add(staged / "model", "bench", rec.format, parameters=rec.parameters)
            label = f"{args.model} ({rec.format})"
        else:
            sys.path.insert(0, str(ROOT))
            from tests.tiny import build_model

            build_model(work / "tiny")
            with src.staging() as staged:
                shutil.copytree(work / "tiny", staged / "model")
                src.add(staged / "model", "bench", "hf")
            label = "tiny random llama (hf)"
        v1 = src.get("bench:1")
        v2_ref = _copy_model(src, v1.ref, "bench", b"v2\n")
        size = sum(p.stat().st_size for _, p in oci.model_files(v1))

        # 1. push + pull vs copy ------------------------------------------------------------------
        t = time.perf_counter()
        shutil.copytree(v1.path, work / "copy")
        copy_s = time.perf_counter() - t
        client = oci.Client(reg_svc.url)
        t = time.perf_counter()
        p1 = oci.push(src, v1.ref, oci.OciRef(reg_svc.url, "bench/model", "v1"), client=client)
        push_s = time.perf_counter() - t
        t = time.perf_counter()
        oci.pull(ModelStore(work / "pulled"), p1.reference, client=client)
        pull_s = time.perf_counter() - t
        p2 = oci.push(src, v2_ref, oci.OciRef(reg_svc.url, "bench/model", "v2"), client=client)
        copy_mbs = size / copy_s / 2**20
        pp_mbs = size / (push_s + pull_s) / 2**20
        floor_s = _curl_floor(reg_svc.url, [p for _, p in oci.model_files(v1)], work)
        floor = f"; curl PUT + GET of the same files {floor_s:.2f}s" if floor_s else ""
        print(
            f"[transfer] {label}: {size / 2**20:.1f} MB; copy {copy_mbs:.0f} MB/s; push {push_s:.2f}s + pull "
            f"{pull_s:.2f}s = {pp_mbs:.0f} MB/s; ratio {pp_mbs / copy_mbs:.2f}x (target >= 0.5x){floor}"
        )

        # 2. agent: v1, idle cost, then switch to v2 under load -------------------------------------
        env = {**os.environ, "SLMOPS_HOME": str(work / "device")}
        agent = subprocess.Popen(
            [
                *_slmops(),
                "agent",
                "run",
                "--device-id",
                "d1",
                "--fleet",
                "bench",
                "--broker",
                broker_url,
                "--port",
                "0",
                "--report-interval",
                "5",
                "--threads",
                str(args.threads),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(agent)
        _wait_state(broker, "bench", "d1", lambda s: s.status == "idle", 180)
        control.assign(
            broker,
            "bench",
            ["d1"],
            reference=str(p1.reference),
            digest=p1.digest,
            format=v1.format,
            served_name="support",
        )
        st = _wait_state(broker, "bench", "d1", lambda s: s.status == "ok" and s.active is not None, 300)
        url = f"http://127.0.0.1:{st['port']}"
        body = {
            "model": "support",
            "messages": [{"role": "user", "content": "Route this ticket: refund please"}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
        }
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        proc = psutil.Process(agent.pid)
        time.sleep(1.0)
        cpu0, t0 = proc.cpu_times(), time.perf_counter()
        time.sleep(args.idle)
        cpu1, t1 = proc.cpu_times(), time.perf_counter()
        idle_pct = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
        agent_rss = proc.memory_info().rss / 2**20

        # plain `slmops serve` of the same model, one request, its RSS
        senv = {**os.environ, "SLMOPS_HOME": str(work / "device")}
        port = services.free_port()
        serve = subprocess.Popen(
            [*_slmops(), "serve", st["active_ref"], "--port", str(port), "--threads", str(args.threads)],
            env=senv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(serve)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={**body, "model": st["active_ref"]}, timeout=120
        ).raise_for_status()
        serve_rss = psutil.Process(serve.pid).memory_info().rss / 2**20
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        print(
            f"[idle] agent CPU {idle_pct:.2f}% of one core over {args.idle:.0f}s (target < 2%); RSS agent "
            f"{agent_rss:.0f} MB vs serve alone {serve_rss:.0f} MB: +{agent_rss - serve_rss:.0f} MB (target <= 50)"
        )

        results: list[tuple[float, float, int]] = []  # (start, latency s, status)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    start = time.perf_counter()
                    try:
                        code = http.post(f"{url}/v1/chat/completions", json=body).status_code
                    except httpx.HTTPError:
                        code = -1
                    results.append((start, time.perf_counter() - start, code))

        threads = [threading.Thread(target=load) for _ in range(args.clients)]
        for th in threads:
            th.start()
        time.sleep(args.before)
        t_assign = time.perf_counter()
        control.assign(
            broker,
            "bench",
            ["d1"],
            reference=str(p2.reference),
            digest=p2.digest,
            format=v1.format,
            served_name="support",
        )
        _wait_state(
            broker, "bench", "d1", lambda s: s.status == "ok" and s.active and s.active.digest == p2.digest, 300
        )
        t_ok = time.perf_counter()
        time.sleep(args.after)
        stop.set()
        for th in threads:
            th.join()
        before = [lat for s, lat, c in results if s < t_assign and c == 200]
        during = [lat for s, lat, c in results if t_assign <= s <= t_ok + 1.0 and c == 200]
        dropped = sum(1 for _, _, c in results if c != 200)
        p95_b, p95_d = _p95(before), _p95(during)
        ratio = p95_d / p95_b if p95_b and p95_d else None
        codes: dict[int, int] = {}
        for _, _, c in results:
            codes[c] = codes.get(c, 0) + 1
        if p95_b is None or p95_d is None:
            raise SystemExit(
                f"not enough successful requests around the switch: status counts {codes} "
                f"{[(round(a - t_assign, 2), round(b, 2), c) for a, b, c in results]} {t_ok - t_assign:.2f}"
            )
        print(
            f"[switch] {len(results)} requests, {dropped} dropped (target 0); switch took {t_ok - t_assign:.1f}s; "
            f"p95 before {p95_b * 1000:.0f} ms ({len(before)} req), during {p95_d * 1000:.0f} ms ({len(during)} req):"
            f" {ratio:.2f}x (target <= 1.10x)"
        )
        out = {
            "bench": "fleet_agent",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "model": label,
            "model_mb": round(size / 2**20, 1),
            "copy_mb_s": round(copy_mbs, 1),
            "push_s": round(push_s, 3),
            "pull_s": round(pull_s, 3),
            "push_pull_mb_s": round(pp_mbs, 1),
            "transfer_ratio": round(pp_mbs / copy_mbs, 3),
            "curl_put_get_s": round(floor_s, 3) if floor_s else None,
            "requests": len(results),
            "dropped": dropped,
            "switch_s": round(t_ok - t_assign, 2),
            "p95_before_ms": round(p95_b * 1000, 1),
            "p95_during_ms": round(p95_d * 1000, 1),
            "p95_ratio": round(ratio, 3) if ratio else None,
            "idle_cpu_pct": round(idle_pct, 3),
            "agent_rss_mb": round(agent_rss, 1),
            "serve_rss_mb": round(serve_rss, 1),
            "rss_overhead_mb": round(agent_rss - serve_rss, 1),
        }
        print(json.dumps(out))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
