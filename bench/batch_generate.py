"""Benchmark: the torch engine's batched generation vs a naive loop of Hugging Face ``generate``.

Both sides run SmolLM2-135M-Instruct, greedy, on the same built-in prompts with the same
token budget, in one process and one run:

* naive: one ``model.generate(**inputs, max_new_tokens=N, do_sample=False)`` call per prompt,
  on the engine's own loaded model and tokenizer; generated tokens are the new tokens up to
  and including the first end-of-sequence token;
* engine: ``TorchEngine.generate`` over all prompts with ``max_batch_size`` set to each of
  ``--batches``; generated tokens are the sum of ``completion_tokens``.

Throughput is generated tokens / wall seconds. The script prints a table, whether the target
(at least 5x the naive loop's tokens/s at batch 32) is met, how many greedy answers are
identical between the naive loop and each batch size, and, as the last line of stdout, one
JSON object with every figure.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/batch_generate.py
    .venv/bin/python bench/batch_generate.py --quick
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
TARGET_RATIO = 5.0
TARGET_BATCH = 32

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is 12 times 7?",
    "Give me a tip for better sleep.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat to someone who has never seen one.",
    "What does a CPU do?",
    "Suggest a name for a pet goldfish.",
    "Why is the sky blue?",
    "Write one sentence encouraging a student before an exam.",
    "What is the boiling point of water at sea level?",
    "Name two planets in our solar system.",
    "How do I make a cup of tea?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is a prime number?",
    "Give an example of a renewable energy source.",
    "Write a short thank-you note to a neighbor.",
    "What is the difference between weather and climate?",
    "How many days are in a leap year?",
    "Recommend a healthy breakfast.",
    "What is Python used for?",
    "Explain what gravity is to a child.",
    "Write a two-line poem about autumn.",
    "What are the three states of matter?",
    "How can I save money on groceries?",
    "Who painted the Mona Lisa?",
    "Give me a fun fact about octopuses.",
    "What is the largest ocean on Earth?",
    "Describe the taste of a lemon.",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per prompt, both sides (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batches", default="1,8,32", help="engine max_batch_size values, comma-separated")
    p.add_argument("--prompts", type=int, default=None, help=f"number of prompts (default {len(PROMPTS)})")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved rounds of every mode; the fastest round of each counts (default 1)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 16 tokens unless given")
    args = p.parse_args(argv)
    if args.max_tokens is None:
        args.max_tokens = 16 if args.quick else 64
    if args.prompts is None:
        args.prompts = 8 if args.quick else len(PROMPTS)
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be comma-separated integers (got {args.batches!r})")
    problems = []
    if not args.batches or min(args.batches) < 1:
        problems.append("--batches needs at least one value, all >= 1")
    if args.max_tokens < 1:
        problems.append("--max-tokens must be >= 1")
    if not 1 <= args.prompts <= len(PROMPTS):
        problems.append(f"--prompts must be between 1 and {len(PROMPTS)}")
    if args.threads < 1:
        problems.append("--threads must be >= 1")
    if args.repeats < 1:
        problems.append("--repeats must be >= 1")
    if problems:
        p.error("; ".join(problems))
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
    }


def naive_loop(engine: Any, prompts: list[str], max_tokens: int, progress: Any = None) -> dict[str, Any]:
    """One Hugging Face ``generate`` call per prompt on the engine's model and tokenizer."""
    import torch

    model, tok = engine.model, engine.tokenizer
    eos_ids = sorted(engine.eos_ids)
    task = progress.add_task("naive HF generate", total=len(prompts)) if progress else None
    texts: list[str] = []
    tokens = 0
    t0 = time.perf_counter()  # prompt formatting and decoding are timed too, as they are inside the engine
    with torch.inference_mode():
        for text in prompts:
            messages = [{"role": "user", "content": text}]
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            enc = tok(rendered, add_special_tokens=False, return_tensors="pt")
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=engine.pad_id,
            )
            new = out[0, enc["input_ids"].shape[1] :].tolist()
            end = next((k + 1 for k, t in enumerate(new) if t in engine.eos_ids), len(new))
            tokens += end
            texts.append(tok.decode(new[:end], skip_special_tokens=True))
            if progress:
                progress.advance(task)
    seconds = time.perf_counter() - t0
    return {"mode": "naive", "batch": 1, "tokens": tokens, "seconds": seconds, "texts": texts}


def engine_run(engine: Any, prompts: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    from slmops.engines.base import GenerationParams, GenerationRequest

    params = GenerationParams(max_tokens=max_tokens, temperature=0)
    requests = [GenerationRequest.chat(p, params) for p in prompts]
    engine.max_batch_size = batch
    t0 = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - t0
    return {
        "mode": "engine",
        "batch": batch,
        "tokens": sum(r.completion_tokens for r in results),
        "seconds": seconds,
        "texts": [r.text for r in results],
    }


def log_run(console: Any, run: dict[str, Any], suffix: str) -> None:
    """One line per finished mode, so a log of a long run shows where it is."""
    load = os.getloadavg()[0]
    console.print(
        f"{run['mode']} batch {run['batch']}{suffix}: {run['tokens']} tokens in {run['seconds']:.2f}s "
        f"({run['tokens'] / run['seconds']:.1f} tok/s, load {load:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from slmops.engines.base import GenerationParams, GenerationRequest
    from slmops.engines.torch_engine import TorchEngine
    from slmops.models.pull import pull
    from slmops.models.store import ModelStore

    out = Console()  # stdout: table and the final JSON line
    err = Console(stderr=True)  # progress and status
    prompts = list(PROMPTS[: args.prompts])

    err.print(
        f"[bold]batch_generate[/]: {MODEL}, {len(prompts)} prompts, {args.max_tokens} tokens, "
        f"{args.threads} threads, batches {args.batches}"
    )
    with err.status(f"Loading {MODEL}..."):
        record = pull(MODEL, ModelStore()).record
        engine = TorchEngine.from_path(record.path, threads=args.threads)
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0]
    if load > 0.5:
        err.print(
            f"[yellow]Load average is {load:.2f} before the run: other processes share the CPUs, "
            "so timings will be noisy (consider --repeats).[/]"
        )
    with err.status("Warming up (one short generate on each side)..."):
        naive_loop(engine, prompts[:1], 4)
        engine.max_batch_size = 1
        engine.generate([GenerationRequest.chat(prompts[0], GenerationParams(max_tokens=4, temperature=0))])

    # Each round runs every mode once; with --repeats > 1 the fastest round of each mode counts,
    # which damps noise from other processes on a shared machine. Greedy texts come from round 1.
    load_before = os.getloadavg()
    rounds: list[list[dict[str, Any]]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        for rnd in range(args.repeats):
            suffix = f" (round {rnd + 1}/{args.repeats})" if args.repeats > 1 else ""
            this = [naive_loop(engine, prompts, args.max_tokens, progress)]
            log_run(err, this[-1], suffix)
            task = progress.add_task("engine batches" + suffix, total=len(args.batches))
            for b in args.batches:
                progress.update(task, description=f"engine batch {b}{suffix}")
                this.append(engine_run(engine, prompts, args.max_tokens, b))
                log_run(err, this[-1], suffix)
                progress.advance(task)
            rounds.append(this)
    load_after = os.getloadavg()
    runs = []
    for k, first in enumerate(rounds[0]):
        best = dict(min((rnd[k] for rnd in rounds), key=lambda r: r["seconds"]))
        best["texts"] = first["texts"]
        best["all_seconds"] = [round(rnd[k]["seconds"], 3) for rnd in rounds]
        runs.append(best)

    naive = runs[0]
    naive_tps = naive["tokens"] / naive["seconds"]
    for r in runs:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["ratio_vs_naive"] = r["tokens_per_s"] / naive_tps
        r["identical_to_naive"] = sum(a == b for a, b in zip(r["texts"], naive["texts"], strict=True))

    best_of = f", best of {args.repeats}" if args.repeats > 1 else ""
    table = Table(
        title=f"{MODEL}: {len(prompts)} prompts x {args.max_tokens} max tokens, greedy, {args.threads} threads{best_of}"
    )
    for col in ("mode", "batch", "tokens", "seconds", "tok/s", "ratio vs naive", "identical to naive"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in runs:
        table.add_row(
            r["mode"],
            str(r["batch"]),
            str(r["tokens"]),
            f"{r['seconds']:.2f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['ratio_vs_naive']:.2f}x",
            f"{r['identical_to_naive']}/{len(prompts)}",
        )
    out.print(table)

    target_run = next((r for r in runs[1:] if r["batch"] == TARGET_BATCH), None)
    ratio = target_run["ratio_vs_naive"] if target_run else None
    met = ratio is not None and ratio >= TARGET_RATIO
    if target_run is None:
        out.print(f"No batch {TARGET_BATCH} run, so the {TARGET_RATIO:g}x target was not checked.")
    else:
        verdict = "[green]MET[/]" if met else "[red]NOT MET[/]"
        out.print(
            f"Throughput ratio, engine batch {TARGET_BATCH} vs naive loop: [bold]{ratio:.2f}x[/] "
            f"(target >= {TARGET_RATIO:g}x: {verdict})"
        )
        if len(prompts) < TARGET_BATCH:
            out.print(f"[yellow]Only {len(prompts)} prompts, so batch {TARGET_BATCH} ran as batch {len(prompts)}.[/]")
        out.print(
            f"Greedy answers identical between the naive loop and batch {TARGET_BATCH}: "
            f"{target_run['identical_to_naive']}/{len(prompts)}"
        )
        for i, (a, b) in enumerate(zip(naive["texts"], target_run["texts"], strict=True)):
            if a != b:
                err.print(f"  differs on prompt {i} ({prompts[i]!r}):\n    naive:  {a!r}\n    engine: {b!r}")

    summary = {
        "benchmark": "batch_generate",
        "model": MODEL,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "naive": {
            "tokens": naive["tokens"],
            "seconds": round(naive["seconds"], 4),
            "tokens_per_s": round(naive["tokens_per_s"], 4),
            "all_seconds": naive["all_seconds"],
        },
        "engine": [
            {
                "batch": r["batch"],
                "tokens": r["tokens"],
                "seconds": round(r["seconds"], 4),
                "tokens_per_s": round(r["tokens_per_s"], 4),
                "ratio_vs_naive": round(r["ratio_vs_naive"], 4),
                "identical_to_naive": r["identical_to_naive"],
                "all_seconds": r["all_seconds"],
            }
            for r in runs[1:]
        ],
        "ratio_batch32_vs_naive": round(ratio, 4) if ratio is not None else None,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "machine": machine_info(args.threads),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
