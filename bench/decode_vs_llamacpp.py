"""Benchmark: single-stream decode of our ONNX GenAI int4 engine vs llama.cpp on a 4-bit GGUF.

Both sides run the same model (default SmolLM2-135M-Instruct), converted by ``slmops optimize``
in this run's store (``--to onnx --precision int4`` with the default int4 method, and ``--to
gguf --quant q4_0``; existing conversions are reused), with the same thread count (default 1),
the same chat prompt (identical token ids: both render the model's chat template) and greedy
decoding:

* ``onnx``: :class:`OrtGenAIEngine` (``slmops generate`` on the ONNX model);
* ``serve``: the same ONNX model behind a child ``slmops serve`` (what a device runs), one
  streaming chat request at a time over HTTP: TTFT = time to the first streamed token, decode
  tokens/s over the tokens after it (the issue's target is this side against llama.cpp);
* ``llama.cpp``: :class:`LlamaCppEngine` (llama-cpp-python, the optional ``llamacpp`` extra);
* ``torch``: the torch engine on the float32 source (the issue's second target, ``--no-torch``
  skips it).

Per side: time to first token = wall time of a ``max_tokens=1`` request; decode tokens/s =
``(n - 1) / (t_n - t_1)`` for an ``n``-token request (every request opens with a different
system message, so no prompt-prefix cache is reused); each measured ``--repeats`` times after one
warm-up, the best kept. For the ONNX side the runtime's own loop (``og.Generator`` with no
detokenization or stop handling) is timed too, so the engine's per-token overhead shows.
The last stdout line is one JSON object with every figure.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/decode_vs_llamacpp.py
    .venv/bin/python bench/decode_vs_llamacpp.py --threads 2 --max-tokens 64 --no-torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from typing import Any

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a long story about a dragon who learns to bake bread."
TARGET_VS_LLAMACPP = 1.2
TARGET_VS_TORCH = 3.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=MODEL, help=f"source model ref (default {MODEL})")
    p.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per timed request (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts (default 3)")
    p.add_argument("--onnx", default=None, help="an existing ONNX GenAI ref (default: convert --model)")
    p.add_argument("--gguf", default=None, help="an existing 4-bit GGUF ref (default: convert --model to q4_0)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch float32 side")
    return p.parse_args(argv)


def _convert(store: Any, model: str, **options: Any) -> str:
    from slmops.models.resolve import resolve
    from slmops.optimize import OptimizeConfig, optimize
    from slmops.optimize.run import default_output

    name = default_output(resolve(model, store), OptimizeConfig(model, **options))
    if store.find(name) is not None:
        return name
    print(f"converting {model} -> {name} ...", file=sys.stderr)
    return optimize(OptimizeConfig(model, **options), store=store).record.ref


def _request(max_tokens: int, nonce: int = 0) -> Any:
    """The benchmark request; ``nonce`` opens the system message, so no engine can reuse a cached
    prompt prefix from the previous request (llama-cpp-python keeps the longest common prefix)."""
    from slmops.engines import GenerationParams, GenerationRequest

    system = f"Session {nonce}. You are a helpful assistant."
    return GenerationRequest.chat(PROMPT, GenerationParams(max_tokens=max_tokens, temperature=0.0), system=system)


def time_engine(engine: Any, max_tokens: int, repeats: int) -> dict[str, Any]:
    engine.generate([_request(4, 1000)])  # warm-up: lazy allocation is not billed
    ttft, total, tokens, text = [], [], 0, ""
    for i in range(repeats):
        t0 = time.perf_counter()
        engine.generate([_request(1, 2 * i + 1)])
        ttft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = engine.generate([_request(max_tokens, 2 * i + 2)])[0]
        total.append(time.perf_counter() - t0)
        tokens, text = result.completion_tokens, result.text
    t1, tn = min(ttft), min(total)
    return {
        "prompt_tokens": engine.count_tokens(_request(1)),
        "completion_tokens": tokens,
        "ttft_ms": round(1000 * t1, 1),
        "decode_tok_s": round((tokens - 1) / max(tn - t1, 1e-9), 2),
        "total_s": round(tn, 3),
        "text_head": text[:60],
    }


def time_serve(ref: str, store: Any, threads: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    """One streaming request at a time through a child ``slmops serve`` of ``ref``."""
    import asyncio

    from slmops.ops.loadtest import run_clients
    from slmops.ops.target import ServerOptions, open_target

    def body(model: str, n: int, nonce: int) -> dict[str, Any]:
        messages = [{"role": "system", "content": f"Session {nonce}. You are a helpful assistant."},
                    {"role": "user", "content": PROMPT}]  # fmt: skip
        return {"model": model, "messages": messages, "max_tokens": n, "temperature": 0}

    options = ServerOptions(threads=threads, precision="fp32")  # exactly ``ref``, no variant swap
    with open_target(ref, store, options=options) as target:
        asyncio.run(run_clients(target, [body(target.model, 4, 1000)], 1, 600))  # warm-up
        samples = [asyncio.run(run_clients(target, [body(target.model, max_tokens, i)], 1, 600))[0][0]
                   for i in range(repeats)]  # fmt: skip
    bad = [s for s in samples if s.status != 200 or s.ttft_s is None]
    if bad:
        raise SystemExit(f"serve side failed: {bad[0].status} {bad[0].error}")
    ttft = min(s.ttft_s for s in samples)
    decode = max((s.tokens - 1) / max(s.latency_s - s.ttft_s, 1e-9) for s in samples)
    return {"ref": ref, "prompt_tokens": samples[0].prompt_tokens, "completion_tokens": samples[0].tokens,
            "ttft_ms": round(1000 * ttft, 1), "decode_tok_s": round(decode, 2),
            "total_s": round(min(s.latency_s for s in samples), 3), "text_head": samples[0].text[:60]}  # fmt: skip


def time_runtime_loop(engine: Any, max_tokens: int, repeats: int) -> float:
    """The ONNX runtime's own decode loop: tokens/s with no detokenization or stop handling."""
    import numpy as np

    og, ids = engine.og, engine.prompt_ids(_request(1))
    best = 0.0
    for _ in range(repeats):
        params = og.GeneratorParams(engine.og_model)
        params.set_search_options(max_length=len(ids) + max_tokens, batch_size=1)
        gen = og.Generator(engine.og_model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        gen.generate_next_token()
        n, t0 = 0, time.perf_counter()
        while not gen.is_done() and n < max_tokens - 1:
            gen.generate_next_token()
            gen.get_next_tokens()
            n += 1
        best = max(best, n / (time.perf_counter() - t0))
    return round(best, 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from slmops.engines import open_engine
    from slmops.engines.llamacpp_engine import LlamaCppEngine
    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore

    load_before = os.getloadavg()[0]
    if load_before > 0.5 * args.threads + 0.5:
        print(f"warning: load average {load_before:.1f}: other jobs share the CPU, figures will be noisy",
              file=sys.stderr)
    store = ModelStore()
    onnx_ref = args.onnx or _convert(store, args.model, to="onnx", precision="int4")
    gguf_ref = args.gguf or _convert(store, args.model, to="gguf", quant="q4_0")
    sides: dict[str, dict[str, Any]] = {}

    onnx_engine = open_engine(onnx_ref, store, threads=args.threads)
    sides["onnx"] = {"ref": onnx_ref, **time_engine(onnx_engine, args.max_tokens, args.repeats)}
    sides["onnx"]["runtime_loop_tok_s"] = time_runtime_loop(onnx_engine, args.max_tokens, args.repeats)
    del onnx_engine
    sides["serve"] = time_serve(onnx_ref, store, args.threads, args.max_tokens, args.repeats)

    gguf = resolve(gguf_ref, store)
    llama = LlamaCppEngine(gguf.load_dir / str(gguf.gguf_file), threads=args.threads)
    sides["llama.cpp"] = {"ref": gguf_ref, **time_engine(llama, args.max_tokens, args.repeats)}
    llama.close()

    if not args.no_torch:
        torch_engine = open_engine(args.model, store, threads=args.threads)
        sides["torch"] = {"ref": args.model, **time_engine(torch_engine, args.max_tokens, args.repeats)}

    onnx_tps = sides["onnx"]["decode_tok_s"]
    ratio_llama = sides["serve"]["decode_tok_s"] / sides["llama.cpp"]["decode_tok_s"]
    ttft_ratio = sides["serve"]["ttft_ms"] / sides["llama.cpp"]["ttft_ms"]
    ratio_torch = onnx_tps / sides["torch"]["decode_tok_s"] if "torch" in sides else None
    print(f"{'side':10} {'ref':42} {'prompt':>6} {'tokens':>6} {'TTFT ms':>8} {'decode tok/s':>12}")
    for name, s in sides.items():
        print(f"{name:10} {s['ref']:42} {s['prompt_tokens']:>6} {s['completion_tokens']:>6} {s['ttft_ms']:>8} "
              f"{s['decode_tok_s']:>12}")
    print(f"onnx runtime loop alone: {sides['onnx']['runtime_loop_tok_s']} tok/s "
          f"(engine overhead {100 * (1 - onnx_tps / sides['onnx']['runtime_loop_tok_s']):.1f}%)")
    print(f"ONNX int4 through slmops serve / llama.cpp in-process: decode {ratio_llama:.2f}x (target >= "
          f"{TARGET_VS_LLAMACPP}x: {'met' if ratio_llama >= TARGET_VS_LLAMACPP else 'missed'}); TTFT "
          f"{ttft_ratio:.2f}x of llama.cpp's (target <= 1.0x: {'met' if ttft_ratio <= 1.0 else 'missed'})")
    if ratio_torch is not None:
        print(f"ONNX int4 / torch fp32: {ratio_torch:.2f}x (target >= {TARGET_VS_TORCH}x: "
              f"{'met' if ratio_torch >= TARGET_VS_TORCH else 'missed'})")
    print(json.dumps({
        "bench": "decode_vs_llamacpp", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "threads": args.threads, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "sides": sides, "ratio_serve_vs_llamacpp": round(ratio_llama, 4),
        "ttft_serve_vs_llamacpp": round(ttft_ratio, 4),
        "ratio_onnx_vs_torch": None if ratio_torch is None else round(ratio_torch, 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
