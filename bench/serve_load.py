"""Benchmark: the server under load, against the engine it wraps, in one run (issue 6 targets).

SmolLM2-135M-Instruct, greedy, fixed prompts. The server is a child ``slmops serve`` process
(started through :func:`slmops.ops.target.open_target`, as ``slmops bench`` does), so its
resident memory is its own; the HTTP clients run in this process.

1. single stream: the engine's own ``stream()`` in this process vs one streaming HTTP request
   through the server, same prompt, same ``max_tokens``; tokens/s = completion tokens / wall
   time from the request to the last token (median of ``--repeats``). Target: HTTP >= 90%.
2. concurrency: aggregate tokens/s of 8 concurrent streaming clients vs 1 client (each level
   sends ``--per-level`` x clients requests). Target: >= 4x (issue 14). Per level the CPU the
   server process and this (client) process used is reported as a share of the wall time
   (200% = both cores); ``--py-spy FILE`` samples the server with py-spy during the 8 clients.
3. mixed load: ``--mixed`` requests at concurrency 32, 10% of them invalid (malformed JSON,
   wrong types, unknown model, max_tokens over the cap, bad temperature): zero 5xx, zero
   broken connections, the server still answers. Then a soak of ``--soak`` valid requests:
   resident memory growth of the server <= 5% (the mixed load is its warm-up).

4. steps (``--parts steps``): the engine's own step-level batch in this process, no HTTP: rows
   1/2/4/8 decoding together (story prompts, greedy), milliseconds per decode step and the share
   of it inside the model graph (ONNX Runtime ``run`` for the ONNX engine, the forward for torch):
   how step time grows with batch rows on these cores.

Prints each comparison with its ratio and, as the last line of stdout, one JSON object.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/serve_load.py
    .venv/bin/python bench/serve_load.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from slmops.engines import GenerationParams, GenerationRequest, open_engine
from slmops.models.pull import pull
from slmops.models.store import ModelStore
from slmops.ops.loadtest import PROMPTS, async_client, chat_body, run_clients, stream_chat
from slmops.ops.target import ServerOptions, Target, open_target
from slmops.ops.validate import ValidateConfig, edge_cases, memory_soak

MODEL = "smollm2-135m-instruct"
INVALID = ("malformed JSON", "wrong types", "unknown model", "huge max_tokens", "negative temperature")


def engine_stream_tps(engine, prompt: str, max_tokens: int) -> tuple[float, int]:
    req = GenerationRequest.chat(prompt, GenerationParams(max_tokens=max_tokens, temperature=0.0))
    t0 = time.perf_counter()
    tokens = 0
    for chunk in engine.stream(req):
        if chunk.finish_reason is not None:
            tokens = chunk.completion_tokens
    return tokens / (time.perf_counter() - t0), tokens


async def mixed_load(target: Target, n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """``n`` requests, every tenth one invalid; counts of statuses and broken connections."""
    bad = [(name, path, body) for name, path, body in edge_cases(target.model) if name in INVALID]
    statuses: dict[int, int] = {}
    cursor = iter(range(n))
    async with async_client(target, concurrency, 600) as client:

        async def worker() -> None:
            for i in cursor:
                if i % 10 == 9:
                    _, path, body = bad[(i // 10) % len(bad)]
                    try:
                        r = await client.post(path, content=body, headers={"content-type": "application/json"})
                        status = r.status_code
                    except httpx.HTTPError:
                        status = 0
                else:
                    sample = await stream_chat(client, target, chat_body(target.model, PROMPTS[i % 8], max_tokens))
                    status = sample.status
                statuses[status] = statuses.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        alive = (await client.post("/v1/chat/completions", json=chat_body(target.model, "Hi", 4))).status_code
    return {"requests": n, "statuses": {str(k): v for k, v in sorted(statuses.items())}, "wall_s": round(wall, 1),
            "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500), "broken": statuses.get(0, 0),
            "alive_after": alive}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL, help=f"model to serve (default {MODEL}; e.g. an int4 ONNX build)")
    ap.add_argument("--max-tokens", type=int, default=48, help="max_tokens for the throughput comparisons")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-level", type=int, default=2, help="requests per client in the 1-vs-8 comparison")
    ap.add_argument("--mixed", type=int, default=1000)
    ap.add_argument("--soak", type=int, default=500)
    ap.add_argument("--load-max-tokens", type=int, default=8, help="max_tokens in the mixed load and the soak")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--parts", default="single,concurrency,load", help="which comparisons to run, comma-separated")
    ap.add_argument("--quick", action="store_true", help="a few requests of each kind (a smoke run)")
    ap.add_argument("--py-spy", default=None, metavar="FILE",
                    help="record the server with py-spy (speedscope JSON) during the 8-client level")
    ap.add_argument("--step-rows", default="1,2,4,8", help="batch rows timed by --parts steps")
    ap.add_argument("--steps", type=int, default=24, help="decode steps timed per row count (--parts steps)")
    ap.add_argument("--ort-profile", action="store_true",
                    help="with --parts steps on an ONNX model: ONNX Runtime's profiler, kernel time per op type per "
                    "decode step, at each row count")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.repeats, args.mixed, args.soak, args.max_tokens = 1, 40, 20, 16
    store = ModelStore()
    pull(MODEL, store)
    model = args.model
    prompt = PROMPTS[0]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    out: dict[str, Any] = {"bench": "serve_load", "model": model, "date": now,
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
                           "load_avg_start": round(os.getloadavg()[0], 2), "max_tokens": args.max_tokens}  # fmt: skip

    # 1a. the engine alone, in this process
    if "single" in parts:
        with open_engine(model, store, threads=args.threads) as engine:
            engine_stream_tps(engine, prompt, 8)  # warm-up
            runs = [engine_stream_tps(engine, prompt, args.max_tokens) for _ in range(args.repeats)]
        engine_tps = statistics.median(t for t, _ in runs)

    if "steps" in parts:
        with open_engine(model, store, threads=args.threads) as engine:
            rows_list = [int(x) for x in args.step_rows.split(",")]
            out["steps"] = step_rows(engine, rows_list, args.steps)
            if args.ort_profile:
                out["ort_profile"] = ort_profile(engine, rows_list, args.steps, args.threads)
        if not parts & {"single", "concurrency", "load"}:
            out["load_avg_end"] = round(os.getloadavg()[0], 2)
            print(json.dumps(out))
            return

    # fp32: the server runs exactly --model, as the in-process engine does (no int4 variant swap)
    options = ServerOptions(max_batch_size=16, max_queue=256, threads=args.threads, precision="fp32")
    with open_target(model, store, options=options, progress=print) as target:
        if "single" in parts:  # 1b. one stream through HTTP, against 1a
            single_stream(target, prompt, args, engine_tps, out)
        if "concurrency" in parts:
            concurrency(target, args, out)
        if "load" in parts:
            load(target, args, out)
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


def single_stream(target: Target, prompt: str, args: argparse.Namespace, engine_tps: float, out: dict) -> None:
    body = chat_body(target.model, prompt, args.max_tokens)
    asyncio.run(run_clients(target, [chat_body(target.model, prompt, 8)], 1, 600))  # warm-up
    http = [asyncio.run(run_clients(target, [body], 1, 600))[0][0] for _ in range(args.repeats)]
    http_tps = statistics.median(s.tokens / s.latency_s for s in http)
    out["single_stream"] = {"engine_tps": round(engine_tps, 2), "http_tps": round(http_tps, 2),
                            "ratio": round(http_tps / engine_tps, 3), "tokens": [s.tokens for s in http],
                            "target": 0.9}  # fmt: skip
    print(f"single stream: engine {engine_tps:.1f} tok/s, HTTP {http_tps:.1f} tok/s "
          f"-> {http_tps / engine_tps:.2f}x (target >= 0.90)")  # fmt: skip


def concurrency(target: Target, args: argparse.Namespace, out: dict) -> None:
    import psutil

    me = psutil.Process()
    level: dict[int, float] = {}
    cpu: dict[int, dict[str, float]] = {}
    for c in (1, 8):
        bodies = [chat_body(target.model, PROMPTS[i % 8], args.max_tokens) for i in range(c * args.per_level)]
        spy = None
        if c == 8 and args.py_spy and target.process is not None:
            spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
                                    str(target.process.pid), "--rate", "50", "--format", "speedscope", "--threads",
                                    "--nonblocking", "-o", args.py_spy], stdout=subprocess.DEVNULL,
                                   stderr=open(args.py_spy + ".log", "wb"))  # noqa: SIM115
        server0 = sum(target.process.cpu_times()[:2]) if target.process else 0.0
        client0 = sum(me.cpu_times()[:2])
        samples, wall = asyncio.run(run_clients(target, bodies, c, 600))
        server_s = sum(target.process.cpu_times()[:2]) - server0 if target.process else 0.0
        client_s = sum(me.cpu_times()[:2]) - client0
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on Ctrl-C
            spy.wait(60)
        level[c] = sum(s.tokens for s in samples if s.status == 200) / wall
        cpu[c] = {"wall_s": round(wall, 2), "server_cpu_pct": round(100 * server_s / wall, 1),
                  "client_cpu_pct": round(100 * client_s / wall, 1)}
    out["concurrency"] = {"one_client_tps": round(level[1], 2), "eight_clients_tps": round(level[8], 2),
                          "ratio": round(level[8] / level[1], 3), "target": 4.0, "cpu": cpu}  # fmt: skip
    print(f"8 clients {level[8]:.1f} tok/s vs 1 client {level[1]:.1f} tok/s -> {level[8] / level[1]:.2f}x "
          "(target >= 4)")  # fmt: skip
    for c, u in cpu.items():
        print(f"  {c} client(s): {u['wall_s']} s wall, server CPU {u['server_cpu_pct']}%, "
              f"clients (this process) CPU {u['client_cpu_pct']}% (200% = both cores)")


STORY = "Write a long story about a dragon who learns to bake bread."


def _story_batch(engine: Any, rows: int, steps: int) -> Any:
    batch = engine.new_batch()
    for i in range(rows):
        req = GenerationRequest.chat(STORY, GenerationParams(max_tokens=steps + 8, temperature=0.0),
                                     system=f"Session {i}. You are a helpful assistant.")
        batch.add(req)
    batch.step()  # prefill (and first token)
    batch.step()  # warm-up step
    return batch


def ort_profile(engine: Any, rows_list: list[int], steps: int, threads: int) -> dict[str, Any]:
    """Per row count: ONNX Runtime's own kernel time per decode step by op type (a second session
    of the same decoder file with profiling on, swapped in after the prefill)."""
    import onnxruntime as ort

    graph = engine.graph
    plain = graph.session
    path = plain._model_path
    result: dict[str, Any] = {}
    for rows in rows_list:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SLMOPS_ORT_SPIN", "0"))
        opts.enable_profiling = True
        opts.profile_file_prefix = f"/tmp/slmops-ort-profile-{rows}"
        profiled = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        batch = _story_batch(engine, rows, steps)
        graph.session = profiled
        for _ in range(steps):
            batch.step()
        graph.session = plain
        while batch:
            batch.step()
        trace = Path(profiled.end_profiling())
        by_op: dict[str, float] = {}
        for ev in json.loads(trace.read_text()):
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                op = ev.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1000 / steps
        trace.unlink()
        total = sum(by_op.values())
        top = dict(sorted(((k, round(v, 2)) for k, v in by_op.items()), key=lambda kv: -kv[1])[:6])
        result[str(rows)] = {"kernel_ms_per_step": round(total, 2), "by_op_ms": top}
        print(f"ort profile: {rows} rows -> {total:.1f} ms of kernels per step; "
              + ", ".join(f"{k} {v}" for k, v in top.items()))
    return result


def step_rows(engine: Any, rows_list: list[int], steps: int) -> dict[str, Any]:
    """Milliseconds per decode step of the engine's step-level batch at each row count, and the
    share inside the model graph (every row decodes throughout: story prompts, a long budget)."""
    graph = getattr(engine, "graph", None)
    inner: list[float] = [0.0]
    if graph is not None:  # the ONNX decoder graph: time its session runs
        session = graph.session

        class Timed:
            def __getattr__(self, name: str) -> Any:
                return getattr(session, name)

            def run_with_iobinding(self, *a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                r = session.run_with_iobinding(*a, **kw)
                inner[0] += time.perf_counter() - t0
                return r

        graph.session = Timed()
    elif hasattr(engine, "model"):
        model = engine.model
        hook_t = [0.0]
        model.register_forward_pre_hook(lambda m, a: hook_t.__setitem__(0, time.perf_counter()))
        model.register_forward_hook(lambda m, a, o: inner.__setitem__(0, inner[0] + time.perf_counter() - hook_t[0]))
    result: dict[str, Any] = {}
    for rows in rows_list:
        batch = _story_batch(engine, rows, steps)
        inner[0], active, t0 = 0.0, [], time.perf_counter()
        for _ in range(steps):
            active.append(len(batch.step()))
        wall, in_graph = time.perf_counter() - t0, inner[0]
        while batch:
            batch.step()
        ms, graph_ms = 1000 * wall / steps, 1000 * in_graph / steps
        result[str(rows)] = {"ms_per_step": round(ms, 2), "graph_ms_per_step": round(graph_ms, 2),
                             "tokens_per_s": round(sum(active) / wall, 1), "mean_rows": round(sum(active) / steps, 2)}
        print(f"steps: {rows} rows -> {ms:.1f} ms/step ({graph_ms:.1f} ms in the graph), "
              f"{sum(active) / wall:.1f} tok/s")
    one = result[str(rows_list[0])]["tokens_per_s"]
    for r in result.values():
        r["vs_first"] = round(r["tokens_per_s"] / one, 2)
    return result


def load(target: Target, args: argparse.Namespace, out: dict) -> None:
    mixed = asyncio.run(mixed_load(target, args.mixed, 32, args.load_max_tokens))
    out["mixed"] = mixed
    print(f"mixed: {mixed['requests']} requests at concurrency 32 in {mixed['wall_s']} s, statuses "
          f"{mixed['statuses']}, 5xx {mixed['server_errors_5xx']}, broken {mixed['broken']} "
          "(target 0)")  # fmt: skip
    soak = memory_soak(target, ValidateConfig(args.model, "", soak_requests=args.soak, warmup=0, concurrency=8))
    out["soak"] = {"requests": args.soak, "rss_growth": soak.figure, "detail": soak.detail, "target": "<= 5%",
                   "passed": soak.status == "pass"}  # fmt: skip
    print(f"soak: RSS growth {soak.figure} ({soak.detail}) (target <= 5%)")


if __name__ == "__main__":
    main()
