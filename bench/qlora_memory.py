"""QLoRA vs LoRA peak resident memory on SmolLM2-135M (float32 weights), in one run.

Each side runs in its own process: load the base for the method (slmops.train.model), then
``--steps`` training steps (forward, backward, AdamW) on one fixed batch of ``--batch-size`` x
``--seq-len`` tokens, every token a target. Reported: peak RSS (``ru_maxrss``, model load
included), RSS after loading, and the weight bytes. Target (issue 3): QLoRA's peak at most 60%
of LoRA's. Prints a table, the ratio and a JSON line.

    SLMOPS_HOME=~/.slmops .venv/bin/python bench/qlora_memory.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

MODEL = "smollm2-135m-instruct"
TARGET = 0.6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def side(method: str, a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore
    from slmops.train import make_config
    from slmops.train.batches import Batch
    from slmops.train.model import load_for_training, weight_bytes
    from slmops.train.steps import token_loss_sum

    torch.manual_seed(0)
    cfg = make_config(dict(model=MODEL, data="unused.jsonl", output="bench", method=method))
    model = load_for_training(resolve(MODEL, ModelStore()), cfg)
    loaded = rss_mb()
    ids = torch.randint(0, model.config.vocab_size, (a.batch_size, a.seq_len))
    pos = torch.arange(a.seq_len).expand(a.batch_size, -1)
    batch = Batch(ids, pos, ids.roll(-1, dims=1), a.batch_size * a.seq_len)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        (token_loss_sum(model, batch) / batch.target_tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = round(time.perf_counter() - t0, 1)
    return {"method": method, "peak_rss_mb": round(peak_mb(), 1), "loaded_rss_mb": round(loaded, 1),
            "weight_mb": round(weight_bytes(model) / 2**20, 1), "seconds": seconds}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--side", choices=["lora", "qlora"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a)))
        return
    sides = {}
    for method in ("lora", "qlora"):
        args = [sys.executable, __file__, "--side", method, "--steps", str(a.steps), "--batch-size",
                str(a.batch_size), "--seq-len", str(a.seq_len)]  # fmt: skip
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        sides[method] = json.loads(out.strip().splitlines()[-1])
    lora, qlora = sides["lora"], sides["qlora"]
    print(f"{'side':<8}{'peak RSS MB':>13}{'loaded RSS MB':>15}{'weights MB':>12}{'train s':>9}")
    for r in (lora, qlora):
        print(f"{r['method']:<8}{r['peak_rss_mb']:>13.0f}{r['loaded_rss_mb']:>15.0f}{r['weight_mb']:>12.0f}"
              f"{r['seconds']:>9.1f}")  # fmt: skip
    ratio = qlora["peak_rss_mb"] / lora["peak_rss_mb"]
    weights = qlora["weight_mb"] / lora["weight_mb"]
    print(f"QLoRA peak RSS = {ratio:.2f}x LoRA's (target <= {TARGET}); weights {weights:.2f}x")
    print(json.dumps({"bench": "qlora_memory", "peak_rss_ratio": round(ratio, 3), "target": TARGET,
                      "met": ratio <= TARGET, "lora": lora, "qlora": qlora, "steps": a.steps,
                      "batch_size": a.batch_size, "seq_len": a.seq_len}))  # fmt: skip


if __name__ == "__main__":
    main()
