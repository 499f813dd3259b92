"""Benchmark: what each quantization costs — float32 vs ONNX int8/int4 and GGUF q8_0/q4_0.

One run converts the source (default SmolLM2-135M-Instruct) with ``slmops optimize`` into this
run's store (existing conversions are reused) and reports, per artifact:

* size on disk, and as a percentage of the float32 source;
* perplexity on held-out text (the number ``optimize`` measured and stored: the built-in
  passage, or ``--ppl-text``), and its change against the source;
* task accuracy on a built-in test set (default ``builtin:support-tickets``, 60 support messages
  routed to 4 labels) through :func:`slmops.evaluate.evaluate`, all models in one call, greedy
  (GGUF files run on the torch engine unless ``SLMOPS_GGUF_ENGINE=llamacpp``).

``--int4`` adds more ONNX int4 methods side by side (e.g. ``--int4 k_quant_mixed,rtn_last``).
Targets (issue 5): int4 ONNX <= 25% of the float32 size, perplexity <= +10%, accuracy drop <= 2
points; int8 perplexity <= +2%. The last stdout line is one JSON object with every figure.

    SLMOPS_HOME=/tmp/slmhome .venv/bin/python bench/quantize_quality.py
    .venv/bin/python bench/quantize_quality.py --int4 k_quant_mixed --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
DATA = "builtin:support-tickets"
TARGETS = {"int4_size_pct": 25.0, "int4_ppl_pct": 10.0, "int4_acc_drop_pts": 2.0, "int8_ppl_pct": 2.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=MODEL, help=f"source model ref (default {MODEL})")
    p.add_argument("--data", default=DATA, help=f"task test set (default {DATA})")
    p.add_argument("--task", default=None, help="task of --data (a built-in set knows its own)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    p.add_argument("--int4", default="", help="extra ONNX int4 methods to compare, comma-separated")
    p.add_argument("--ppl-text", type=Path, default=None, help="held-out text file (default: the built-in passage)")
    p.add_argument("--threads", type=int, default=None, help="engine threads for the task evaluation")
    return p.parse_args(argv)


def variants(extra_int4: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [
        ("onnx fp32", {"to": "onnx", "precision": "fp32"}),
        ("onnx int8", {"to": "onnx", "precision": "int8"}),
        ("onnx int4 (default)", {"to": "onnx", "precision": "int4"}),
        ("gguf q8_0", {"to": "gguf", "quant": "q8_0"}),
        ("gguf q4_0", {"to": "gguf", "quant": "q4_0"}),
    ]
    for algo in filter(None, (a.strip() for a in extra_int4.split(","))):
        out.append((f"onnx int4 {algo}", {"to": "onnx", "precision": "int4", "algorithm": algo, "output": None}))
    return out


def convert(store: Any, model: str, options: dict[str, Any], ppl_text: Path | None) -> Any:
    from slmops.models.resolve import resolve
    from slmops.optimize import OptimizeConfig, optimize
    from slmops.optimize.run import default_output

    options = {k: v for k, v in options.items() if k != "output"}
    name = default_output(resolve(model, store), OptimizeConfig(model, **options))
    if "algorithm" in options:
        name = f"{name}-{options['algorithm'].replace('_', '-')}"
    existing = store.find(name)
    if existing is not None and (existing.metrics.get("optimize") or {}).get("text") == (
        str(ppl_text) if ppl_text else "builtin"
    ):
        return existing
    print(f"converting {model} -> {name} ...", file=sys.stderr)
    return optimize(
        OptimizeConfig(model, output=name, ppl_text=ppl_text, no_task_check=True, **options), store=store
    ).record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from slmops.evaluate import EvalConfig, evaluate
    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore
    from slmops.optimize.task_check import explicit

    load_before = os.getloadavg()[0]
    store = ModelStore()
    source = resolve(args.model, store)
    check = explicit(args.data, args.task)
    records = [(label, convert(store, args.model, opts, args.ppl_text)) for label, opts in variants(args.int4)]
    print(f"scoring {len(records) + 1} models on {args.data} ({check.task}) ...", file=sys.stderr)
    config = EvalConfig((source.label, *[r.ref for _, r in records]), check.data, check.task, record=False,
                        latency_samples=0, limit=args.limit, threads=args.threads)
    report = evaluate(config, store=store, progress=lambda m: print(m, file=sys.stderr))
    metric = report.primary_metric
    scores = [m.metrics.get(metric) if m.ok else None for m in report.models]
    src_score = scores[0]
    first_q = records[0][1].metrics["optimize"]
    src_size, src_ppl = first_q["source_size_bytes"], first_q["source_perplexity"]
    rows: list[dict[str, Any]] = [{
        "label": "source fp32 (torch)", "ref": source.label, "size_mb": round(src_size / 1e6, 1),
        "size_pct": 100.0, "perplexity": round(src_ppl, 3), "ppl_change_pct": 0.0, metric: src_score,
        "delta_pts": 0.0,
    }]
    for (label, rec), score in zip(records, scores[1:], strict=True):
        q = rec.metrics["optimize"]
        rows.append({
            "label": label, "ref": rec.ref, "algorithm": rec.recipe.get("algorithm"),
            "size_mb": round(q["size_bytes"] / 1e6, 1), "size_pct": round(100 * q["size_bytes"] / src_size, 1),
            "perplexity": round(q["perplexity"], 3), "ppl_change_pct": q["perplexity_increase_pct"], metric: score,
            "delta_pts": None if score is None or src_score is None else round(100 * (score - src_score), 2),
        })
    print(f"\n{'artifact':28} {'size MB':>8} {'% fp32':>7} {'ppl':>8} {'ppl chg':>8} {metric:>9} {'Δ pts':>7}")
    for r in rows:
        score = "-" if r[metric] is None else f"{100 * r[metric]:.1f}"
        delta = "-" if r["delta_pts"] is None else f"{r['delta_pts']:+.1f}"
        print(f"{r['label']:28} {r['size_mb']:>8} {r['size_pct']:>7} {r['perplexity']:>8} "
              f"{r['ppl_change_pct']:>+7.2f}% {score:>9} {delta:>7}")
    int4 = next(r for r in rows if r["label"] == "onnx int4 (default)")
    int8 = next(r for r in rows if r["label"] == "onnx int8")
    checks = {
        "int4_size_pct": int4["size_pct"] <= TARGETS["int4_size_pct"],
        "int4_ppl_pct": int4["ppl_change_pct"] <= TARGETS["int4_ppl_pct"],
        "int4_acc_drop_pts": int4["delta_pts"] is not None and -int4["delta_pts"] <= TARGETS["int4_acc_drop_pts"],
        "int8_ppl_pct": int8["ppl_change_pct"] <= TARGETS["int8_ppl_pct"],
    }
    for key, ok in checks.items():
        print(f"target {key} <= {TARGETS[key]}: {'met' if ok else 'missed'}")
    print(json.dumps({
        "bench": "quantize_quality", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "model": args.model, "data": args.data, "task": check.task, "metric": metric,
        "records": len(report.scored_items), "gguf_engine": os.environ.get("SLMOPS_GGUF_ENGINE", "torch"),
        "ppl_text": str(args.ppl_text) if args.ppl_text else "builtin",
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "rows": rows, "targets": TARGETS, "met": checks,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
