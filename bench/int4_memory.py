"""Benchmark: where the resident memory of a served model goes, int4 ONNX vs the float32 teacher.

Each model is measured in a fresh child process (so nothing is shared or cached between them)
that first imports what every engine shares (PyTorch, transformers: ``preload_runtime``, as
``slmops eval`` does), then loads the model step by step through the engine slmops serves it
with, reading ``/proc/self/status`` after each step:

* ``runtime``: the inference runtime's own import (onnxruntime for ONNX; nothing for torch);
* ``tokenizer``: the model's tokenizer (``load_tokenizer``);
* ``engine``: the rest of ``open_engine`` (weights, the ONNX session with its pre-packed
  MatMulNBits weights, or the torch module over memory-mapped safetensors);
* ``answer``: one greedy ``--max-tokens`` answer (KV cache, activations; for torch, the
  memory-mapped weight pages touched by the first forward pass).

``added`` is the peak resident set during load + answer minus the resident set before the
runtime import: what the demo table calls "memory (RSS added)", runtime included. Resident
memory is split into anonymous (heap, copies) and file-backed (libraries, memory-mapped weight
files) pages. The last stdout line is one JSON object.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/int4_memory.py
    .venv/bin/python bench/int4_memory.py --models demo-distill,support-router@prod
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

DEFAULT = "smollm2-135m-instruct,smollm2-135m-instruct-onnx-int4"
TARGET = 0.90  # the issue's memory target: int4 student at least 90% below the float32 teacher


def _status() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process in MB."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) // 1024
    return out


def child(ref: str, max_tokens: int, threads: int) -> dict[str, Any]:
    from slmops.evaluate.model import preload_runtime
    from slmops.evaluate.perf import RssSampler, release_memory

    preload_runtime()
    from slmops.engines import GenerationParams, GenerationRequest, open_engine
    from slmops.models.loader import load_tokenizer
    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore, folder_size

    store = ModelStore()
    resolved = resolve(ref, store)
    release_memory()
    steps: dict[str, dict[str, int]] = {}
    before = _status()
    with RssSampler() as sampler:
        if resolved.format == "onnx-genai":
            import onnxruntime  # noqa: F401
        steps["runtime"] = _status()
        tokenizer = load_tokenizer(resolved.load_dir) if resolved.format != "gguf" else None
        steps["tokenizer"] = _status()
        del tokenizer
        engine = open_engine(ref, store, threads=threads)
        steps["engine"] = _status()
        request = GenerationRequest.chat("Write a story about a dragon.", GenerationParams(max_tokens=max_tokens))
        result = engine.generate([request])[0]
        steps["answer"] = _status()
    size_mb = round(folder_size(resolved.path) / 2**20, 1)
    out: dict[str, Any] = {"ref": ref, "format": resolved.format, "size_mb": size_mb}
    prev = before
    for name, now in steps.items():
        out[name] = {k: now[k] - prev[k] for k in now}
        prev = now
    out["resident_mb"] = {k: steps["answer"][k] - before[k] for k in before}
    out["added_mb"] = round((sampler.peak - sampler.before) / 2**20, 1)
    out["completion_tokens"] = result.completion_tokens
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT, help=f"comma-separated refs; the first is the baseline ({DEFAULT})")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.max_tokens, args.threads)))
        return 0
    rows = []
    for ref in args.models.split(","):
        cmd = [sys.executable, __file__, "--child", ref, "--max-tokens", str(args.max_tokens),
               "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{ref}: {done.stderr.strip()[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'model':44} {'runtime':>8} {'tokenizer':>9} {'engine':>8} {'answer':>8} {'anon':>6} {'file':>6} "
          f"{'added':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['ref']:44} {r['runtime']['VmRSS']:>8} {r['tokenizer']['VmRSS']:>9} {r['engine']['VmRSS']:>8} "
              f"{r['answer']['VmRSS']:>8} {r['resident_mb']['RssAnon']:>6} {r['resident_mb']['RssFile']:>6} "
              f"{r['added_mb']:>7}")  # fmt: skip
    base = rows[0]["added_mb"]
    for r in rows[1:]:
        cut = 1 - r["added_mb"] / base
        print(f"{r['ref']}: {cut:.1%} below {rows[0]['ref']} (target >= {TARGET:.0%}: "
              f"{'met' if cut >= TARGET else 'missed'})")
    print(json.dumps({"bench": "int4_memory", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
                      "load_avg": round(os.getloadavg()[0], 2), "rows": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
