"""Benchmark: teacher generation (``slmops distill generate``) batched vs one request at a time.

Both sides call :func:`slmops.distill.generate.run_generate` with the same teacher
(SmolLM2-135M-Instruct, greedy), the same prompts (the first ``--prompts`` records of
``builtin:support-language-train``) and the same recipe, in one process and one run; the only
difference is ``batch_size``: 1 (one-at-a-time) against ``--batch`` (the engine batches every
request of a batch). The teacher is loaded once and shared, so loading time is billed to neither.
Throughput is completion tokens / generation seconds, as ``run_generate`` reports it. Greedy
answers must be the same on both sides; the script counts the identical ones.

The one-at-a-time side runs with the engine's prefix cache switched off (the naive loop: every
prompt prefilled in full); the batched side with a fresh, empty cache, as ``distill generate``
runs by default (prompts share the recipe's system prompt and instruction, which are then
prefilled once); its hit rate is reported.

Prints a table, the ratio against the target (>= 5x), and, as the last line of stdout, a JSON
object with every figure.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/distill_generate.py --prompts 64 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TEACHER = "smollm2-135m-instruct"
DATA = "builtin:support-language-train"
TARGET_RATIO = 5.0


class TimedModel:
    """Wraps the engine's model: wall time of every forward, split into prefill (more than one
    new token per row) and decode (one token per row) and by batch rows (``--profile``)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: dict[tuple[str, int], list[float]] = {}  # (kind, rows) -> [calls, seconds, tokens]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        entry = self.calls.setdefault(("prefill" if ids.shape[1] > 1 else "decode", int(ids.shape[0])), [0, 0.0, 0])
        entry[0] += 1
        entry[1] += time.perf_counter() - t0
        entry[2] += int(ids.numel())
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def take(self) -> dict[str, Any]:
        """The split since the last call, and reset: seconds per kind, and per (kind, rows)."""
        calls, self.calls = self.calls, {}
        out: dict[str, Any] = {k: round(sum(v[1] for (kind, _), v in calls.items() if kind == k), 3)
                               for k in ("prefill", "decode")}
        out["by_rows"] = {f"{kind}@{rows}": {"calls": v[0], "seconds": round(v[1], 3), "tokens": v[2],
                                             "ms_per_call": round(1000 * v[1] / v[0], 1)}
                          for (kind, rows), v in sorted(calls.items())}
        return out


def run_side(engine: Any, batch: int, prompts: int, max_tokens: int, out_dir: Path,
             recipe: Path | None = None) -> tuple[Any, list[str], list[tuple[str | None, Any]]]:
    """One ``run_generate`` pass: its result, the raw answers and (accepted label or None when a
    filter rejected the answer, the dataset's label), in input order."""
    from slmops.distill import make_generate_config, run_generate

    name = f"batch{batch}{'-' + recipe.stem if recipe else ''}.jsonl"
    config = make_generate_config(teacher=TEACHER, data=DATA, task="classification", limit=prompts,
                                  batch_size=batch, max_tokens=max_tokens, output=out_dir / name, recipe=recipe)
    result = run_generate(config, engine=engine)
    rows = [json.loads(x) for p in (result.output, result.rejected_file) if p.exists()
            for x in p.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda r: r["index"])
    labels = [(r["answer"] if "reason" not in r else None, r.get("gold")) for r in rows]
    return result, [r["output"] for r in rows], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16, help="teacher answer budget (the classification default)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--format-first", action="store_true",
                        help="also run the batched side with the label instruction before the ticket (a recipe "
                        "with format_first: true): its acceptance, label agreement and prefix-cache hits")
    parser.add_argument("--profile", action="store_true",
                        help="time every model forward: prefill vs decode seconds, by batch rows, per side")
    args = parser.parse_args()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    from slmops.engines import open_engine
    from slmops.models.store import ModelStore

    store = ModelStore()
    t0 = time.perf_counter()
    engine = open_engine(TEACHER, store, threads=args.threads)
    load_s = time.perf_counter() - t0
    from slmops.engines.prefix_cache import PrefixCache

    cache = PrefixCache()

    def correct(labels: list[tuple[str | None, Any]]) -> int:
        return sum(a is not None and a == gold for a, gold in labels)

    other: dict[str, Any] | None = None
    profile: dict[str, Any] = {}
    timed = TimedModel(engine.model) if args.profile else None
    if timed is not None:
        engine.model = timed
    with tempfile.TemporaryDirectory() as tmp, engine:
        engine.prefix_cache = None
        single, single_out, _ = run_side(engine, 1, args.prompts, args.max_tokens, Path(tmp))
        if timed is not None:
            profile["single"] = {**timed.take(), "total": round(single.seconds, 3)}
        engine.prefix_cache = cache
        batched, batched_out, labels = run_side(engine, args.batch, args.prompts, args.max_tokens, Path(tmp))
        if timed is not None:
            profile["batched"] = {**timed.take(), "total": round(batched.seconds, 3)}
        if args.format_first:
            recipe = Path(tmp) / "first.yaml"
            recipe.write_text("format_first: true\n", encoding="utf-8")
            other_cache = engine.prefix_cache = PrefixCache()
            run, _, other_labels = run_side(engine, args.batch, args.prompts, args.max_tokens, Path(tmp), recipe)
            agree = sum(a[0] == b[0] for a, b in zip(labels, other_labels, strict=True))
            if timed is not None:
                profile["format_first"] = {**timed.take(), "total": round(run.seconds, 3)}
            other = {"accepted": run.counts.get("accepted", 0), "counts": dict(run.counts),
                     "correct": correct(other_labels), "tokens_per_second": round(run.tokens_per_second, 2),
                     "seconds": round(run.seconds, 2), "agreeing_labels": agree,
                     "prefix_cache": other_cache.stats.as_dict()}
    hits = cache.stats
    ratio = batched.tokens_per_second / single.tokens_per_second if single.tokens_per_second else 0.0
    same = sum(a == b for a, b in zip(single_out, batched_out, strict=True))
    print(f"{'side':<16}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'accepted':>10}")
    for name, r in (("one-at-a-time", single), (f"batch {args.batch}", batched)):
        print(f"{name:<16}{r.completion_tokens:>8}{r.seconds:>10.2f}{r.tokens_per_second:>10.1f}"
              f"{r.counts.get('accepted', 0):>10}")
    print(f"ratio {ratio:.2f}x (target {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
          f"{same}/{len(single_out)} answers identical; teacher load {load_s:.1f} s; prefix cache hit rate "
          f"{hits.hit_rate:.0%} ({hits.hit_tokens} of {hits.lookup_tokens} prompt tokens not prefilled)")
    print(f"teacher labels: {correct(labels)}/{len(labels)} accepted labels equal the dataset's")
    if other is not None:
        o = other["prefix_cache"]
        print(f"format_first (instruction before the ticket), batch {args.batch}: {other['accepted']}/{len(labels)} "
              f"accepted (default order {batched.counts.get('accepted', 0)}), {other['agreeing_labels']}/{len(labels)}"
              f" labels the same as the default order's, {other['tokens_per_second']:.1f} tok/s, "
              f"{other['seconds']:.2f} s, {o['hit_tokens']} of {o['lookup_tokens']} prompt tokens not prefilled; "
              f"{other['correct']}/{len(labels)} equal the dataset's labels")
    for side, split in profile.items():
        rest = split["total"] - split["prefill"] - split["decode"]
        print(f"profile {side}: total {split['total']:.2f} s = prefill {split['prefill']:.2f} + decode "
              f"{split['decode']:.2f} + rest {rest:.2f}; " + ", ".join(
                  f"{k}: {v['calls']}x {v['ms_per_call']} ms" for k, v in split["by_rows"].items()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({
        "bench": "distill_generate", "teacher": TEACHER, "data": DATA, "prompts": args.prompts, "batch": args.batch,
        "max_tokens": args.max_tokens, "single_tokens_per_second": round(single.tokens_per_second, 2),
        "batched_tokens_per_second": round(batched.tokens_per_second, 2), "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO, "target_met": ratio >= TARGET_RATIO, "identical_answers": same,
        "correct_labels": correct(labels), "counts": dict(batched.counts), "profile": profile or None,
        "single_seconds": round(single.seconds, 2), "batched_seconds": round(batched.seconds, 2),
        "prefix_cache": hits.as_dict(), "format_first": other, "cpus": os.cpu_count(), "load_avg_start": load_start,
        "load_avg_end": load, "machine": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }))


if __name__ == "__main__":
    main()
