"""Benchmark: int4 ONNX build settings side by side: size, quality and single-stream speed.

Give the ONNX GenAI variants to compare as store refs (built beforehand with ``slmops optimize
MODEL --to onnx --precision int4 --block-size N --accuracy-level L --algorithm A --eval-data
builtin:support-tickets --eval-task classification --output NAME``); the first is the baseline
(the current default build). For each variant the script reads what ``optimize`` measured and
stored (size, perplexity and its change against the source, the task metric on ``--eval-data``)
and times single-stream greedy decoding in this one process, with every engine loaded at once
and the timed requests interleaved round-robin across the variants (so load from other jobs
spreads over all of them alike): time to first token = wall time of a ``max_tokens=1`` request,
decode tokens/s = ``(n - 1) / (t_n - t_1)`` for an ``n``-token request, best of ``--repeats``
(requests as in ``decode_vs_llamacpp.py``: a new system message each time, so no prefix is
reused). ``--gguf REF`` adds llama.cpp on a 4-bit GGUF as a reference side (needs the
``llamacpp`` extra). Prints a table with each variant's ratio to the baseline, and the last
stdout line is a JSON object with every figure.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/int4_sweep.py smollm2-int4 smollm2-int4-b64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from decode_vs_llamacpp import _request  # noqa: E402  (the same requests as the llama.cpp bench)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("variants", nargs="+", help="ONNX GenAI store refs; the first is the baseline")
    p.add_argument("--gguf", default=None, help="a 4-bit GGUF store ref timed alongside on llama.cpp (reference)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per timed request (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts (default 3)")
    return p.parse_args(argv)


def stored_quality(record: Any) -> dict[str, Any]:
    """What ``slmops optimize`` measured and stored for the variant (None where it did not)."""
    m, recipe = record.metrics.get("optimize") or {}, record.recipe
    task = m.get("task") or {}
    return {
        "size_mb": round(record.size_bytes / 1e6, 1),
        "perplexity": m.get("perplexity"),
        "ppl_change_pct": m.get("perplexity_increase_pct"),
        "task": task,
        "options": {k: recipe.get(k) for k in ("precision", "block_size", "accuracy_level", "algorithm", "symmetric")
                    if k in recipe},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from slmops.engines import open_engine
    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore

    load_start = os.getloadavg()[0]
    store = ModelStore()
    sides: dict[str, dict[str, Any]] = {}
    engines: dict[str, Any] = {}
    for ref in args.variants:
        record = store.get(ref)
        sides[ref] = {"ref": record.ref, **stored_quality(record), "ttft_s": [], "total_s": []}
        engines[ref] = open_engine(ref, store, threads=args.threads)
    if args.gguf:
        from slmops.engines.llamacpp_engine import LlamaCppEngine

        gguf = resolve(args.gguf, store)
        sides["llama.cpp"] = {"ref": args.gguf, "size_mb": round(store.get(args.gguf).size_bytes / 1e6, 1),
                              "ttft_s": [], "total_s": []}
        engines["llama.cpp"] = LlamaCppEngine(gguf.load_dir / str(gguf.gguf_file), threads=args.threads)
    for engine in engines.values():
        engine.generate([_request(4, 1000)])  # warm-up: lazy allocation is not billed
    nonce = 0
    for _ in range(args.repeats):
        for name, engine in engines.items():
            nonce += 2
            t0 = time.perf_counter()
            engine.generate([_request(1, nonce)])
            sides[name]["ttft_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = engine.generate([_request(args.max_tokens, nonce + 1)])[0]
            sides[name]["total_s"].append(time.perf_counter() - t0)
            sides[name]["completion_tokens"] = result.completion_tokens
            print(f"{name}: TTFT {sides[name]['ttft_s'][-1]:.3f} s, {result.completion_tokens} tokens in "
                  f"{sides[name]['total_s'][-1]:.2f} s", file=sys.stderr, flush=True)
    for engine in engines.values():
        engine.close()
    for s in sides.values():
        t1, tn = min(s["ttft_s"]), min(s["total_s"])
        s["ttft_ms"] = round(1000 * t1, 1)
        s["decode_tok_s"] = round((s["completion_tokens"] - 1) / max(tn - t1, 1e-9), 2)
        s["ttft_s"] = [round(x, 4) for x in s["ttft_s"]]
        s["total_s"] = [round(x, 4) for x in s["total_s"]]
    base = sides[args.variants[0]]
    print(f"{'variant':44} {'MB':>6} {'ppl':>7} {'Δppl%':>7} {'acc':>6} {'TTFT ms':>8} {'tok/s':>7} {'vs base':>7}")
    for name, s in sides.items():
        acc = (s.get("task") or {}).get("score")
        ppl, dppl = s.get("perplexity"), s.get("ppl_change_pct")
        print(f"{name:44} {s['size_mb']:>6} {'-' if ppl is None else f'{ppl:.3f}':>7} "
              f"{'-' if dppl is None else f'{dppl:+.2f}':>7} {'-' if acc is None else f'{acc:.3f}':>6} "
              f"{s['ttft_ms']:>8} {s['decode_tok_s']:>7} {s['decode_tok_s'] / base['decode_tok_s']:>6.2f}x")
    print(json.dumps({
        "bench": "int4_sweep", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
        "threads": args.threads, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2), "sides": sides,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
