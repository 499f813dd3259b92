"""Benchmark: structured output by constrained decoding vs asking nicely, on both local engines.

Validity: the same prompts (several JSON schemas; each prompt states the wanted keys) are answered
twice per engine in batches of ``--batch-size``: once with the schema enforced (``response_format``
json_schema: llguidance masks every row's logits) and once unconstrained (the prompt alone). The
figure is the share of answers that parse as JSON and validate against their schema; for the
unconstrained side a lenient rate is reported too (a Markdown code fence stripped first).

Cost: decode tokens/s with and without a grammar on the same prompt, forcing the same number of
tokens on both sides: the prompt asks for a long story, the constrained side must answer
``{"story": "..."}`` with a ``minLength`` it cannot reach in ``--speed-tokens`` tokens, so both run
to the limit. Single stream and a batch of ``--batch-size`` rows; best of ``--repeats`` after a
warm-up. ``decode tok/s = (n - 1) / (t_n - t_1)`` (``t_1`` = the time to the first token).

Engines: the torch engine on SmolLM2-135M-Instruct (float32) and the ONNX GenAI engine on its
int4 build (``slmops optimize --to onnx --precision int4``; reused when present). The last stdout
line is one JSON object with every figure.

    SLMOPS_HOME=/tmp/so-home .venv/bin/python bench/structured_output.py
    .venv/bin/python bench/structured_output.py --answers 40 --no-onnx   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

MODEL = "smollm2-135m-instruct"
TARGET_COST = 0.15  # constrained decoding may cost at most 15% of decode tokens/s

SCHEMAS: dict[str, dict[str, Any]] = {
    "ticket": {
        "type": "object",
        "properties": {
            "category": {"enum": ["billing", "technical", "account", "other"]},
            "urgent": {"type": "boolean"},
        },
        "required": ["category", "urgent"],
    },
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "city": {"type": "string", "maxLength": 40},
        },
        "required": ["name", "age", "city"],
    },
    "sentiment": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "keywords": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
        },
        "required": ["sentiment", "score", "keywords"],
    },
    "event": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "attendees": {"type": "integer", "minimum": 1, "maximum": 10000},
        },
        "required": ["title", "date", "attendees"],
    },
}

INPUTS: dict[str, list[str]] = {
    "ticket": ["I was charged twice this month.", "The app crashes when I log in.", "Please change my email.",
               "My invoice shows the wrong amount.", "I cannot reset my password and I have a demo in an hour.",
               "Where can I download the desktop client?", "Your last update broke sync on Android.",
               "Cancel my subscription please.", "How do I add a second user?", "The refund never arrived."],
    "person": ["Maria Lopez, 34, lives in Madrid.", "John Smith is a 52-year-old teacher from Leeds.",
               "Aiko, aged 27, moved to Osaka last year.", "Pierre (61) runs a bakery in Lyon.",
               "Our new intern Sam is 19 and from Toronto.", "Grandma Olga turned 88 in Kyiv.",
               "Dr. Ahmed Khan, 45, practises in Karachi.", "Lena is 30 and works in Berlin.",
               "Tom, a 23 year old student in Boston.", "Priya, 41, lives in Pune."],
    "sentiment": ["I love this phone, the battery lasts forever!", "Terrible service, I waited two hours.",
                  "The package arrived on Tuesday.", "Best pizza in town, great staff.",
                  "The screen cracked after one week.", "It works as described.",
                  "Amazing concert, the band was on fire.", "I want my money back.",
                  "The hotel was fine, nothing special.", "Fast delivery and friendly support."],
    "event": ["The annual meetup is on 2025-09-14 with about 300 people.",
              "Board meeting on 2026-01-05, 12 attendees.", "Launch party 2025-11-20, we expect 150 guests.",
              "Workshop on 2025-10-02 for 25 engineers.", "The wedding is 2026-06-06 with 120 guests.",
              "Hackathon on 2025-12-01, 80 participants.", "Team lunch 2025-08-29, 9 people.",
              "Conference on 2026-03-17 with 2000 attendees.", "Book club 2025-09-30, 7 readers.",
              "Charity run 2026-04-12, 500 runners."],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=MODEL, help=f"source model ref (default {MODEL})")
    p.add_argument("--onnx", default=None, help="an existing ONNX GenAI ref (default: convert --model to int4)")
    p.add_argument("--no-onnx", action="store_true", help="torch engine only")
    p.add_argument("--answers", type=int, default=200, help="constrained answers in all, split over engines")
    p.add_argument("--batch-size", type=int, default=8, help="rows decoded together (default 8)")
    p.add_argument("--max-tokens", type=int, default=96, help="most tokens per answer (default 96)")
    p.add_argument("--speed-tokens", type=int, default=64, help="tokens per timed speed request (default 64)")
    p.add_argument("--repeats", type=int, default=2, help="timed speed runs per side; the best counts")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    return p.parse_args(argv)


def _convert(store: Any, model: str) -> str:
    from slmops.models.resolve import resolve
    from slmops.optimize import OptimizeConfig, optimize
    from slmops.optimize.run import default_output

    config = OptimizeConfig(model, to="onnx", precision="int4")
    name = default_output(resolve(model, store), config)
    if store.find(name) is not None:
        return name
    print(f"converting {model} -> {name} ...", file=sys.stderr)
    return optimize(config, store=store).record.ref


def prompt(kind: str, text: str) -> str:
    keys = ", ".join(SCHEMAS[kind]["properties"])
    return f"Read this and answer only with a JSON object with the keys {keys}.\n\n{text}"


def _valid(text: str, schema: dict[str, Any], lenient: bool = False) -> bool:
    import jsonschema

    text = text.strip()
    if lenient:
        fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
        text = fence.group(1).strip() if fence else text[text.find("{") : text.rfind("}") + 1] or text
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def validity(engine: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from slmops.engines import GenerationParams, GenerationRequest
    from slmops.engines.grammar import with_json_schema

    cases = [(k, t) for i in range(n) for k in [list(SCHEMAS)[i % len(SCHEMAS)]] for t in [INPUTS[k][(i // 4) % 10]]]
    base = GenerationParams(max_tokens=args.max_tokens, temperature=0.0)
    out: dict[str, Any] = {}
    for side in ("constrained", "unconstrained"):
        requests = [
            GenerationRequest.chat(prompt(k, t), with_json_schema(base, SCHEMAS[k]) if side == "constrained" else base)
            for k, t in cases
        ]
        t0 = time.perf_counter()
        results = []
        for start in range(0, len(requests), args.batch_size):
            results += engine.generate(requests[start : start + args.batch_size])
        seconds = time.perf_counter() - t0
        ok = [_valid(r.text, SCHEMAS[k]) for r, (k, _) in zip(results, cases, strict=True)]
        lenient = [_valid(r.text, SCHEMAS[k], lenient=True) for r, (k, _) in zip(results, cases, strict=True)]
        tokens = sum(r.completion_tokens for r in results)
        out[side] = {
            "answers": len(results),
            "valid": sum(ok),
            "valid_rate": round(sum(ok) / len(ok), 4),
            "valid_rate_lenient": round(sum(lenient) / len(lenient), 4),
            "finish_length": sum(r.finish_reason == "length" for r in results),
            "completion_tokens": tokens,
            "seconds": round(seconds, 2),
            "tok_s": round(tokens / seconds, 2),
            "example": results[0].text[:120],
            "bad_example": next((r.text[:120] for r, g in zip(results, ok, strict=True) if not g), None),
        }
    return out


def _speed_request(nonce: int, tokens: int, constrained: bool) -> Any:
    from slmops.engines import GenerationParams, GenerationRequest
    from slmops.engines.grammar import with_json_schema

    params = GenerationParams(max_tokens=tokens, temperature=0.0)
    if constrained:  # a string it cannot finish in `tokens` tokens: both sides decode exactly `tokens`
        story = {"type": "object", "properties": {"story": {"type": "string", "minLength": 50 * tokens}},
                 "required": ["story"]}  # fmt: skip
        params = with_json_schema(params, story)
    text = "Write a long story about a dragon who learns to bake bread."
    return GenerationRequest.chat(text, params, system=f"Session {nonce}. You are a helpful assistant.")


def speed(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    engine.generate([_speed_request(0, 4, True)])  # warm-up (and the grammar tokenizer is built once)
    nonce = 1
    for rows in (1, args.batch_size):
        for constrained in (False, True):
            first, whole, tokens = [], [], 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                engine.generate([_speed_request(nonce + i, 1, constrained) for i in range(rows)])
                first.append(time.perf_counter() - t0)
                nonce += rows
                t0 = time.perf_counter()
                results = engine.generate([_speed_request(nonce + i, args.speed_tokens, constrained)
                                           for i in range(rows)])  # fmt: skip
                whole.append(time.perf_counter() - t0)
                nonce += rows
                tokens = min(r.completion_tokens for r in results)
            t1, tn = min(first), min(whole)
            key = f"batch{rows}_{'constrained' if constrained else 'free'}"
            out[key] = round(rows * (tokens - 1) / max(tn - t1, 1e-9), 2)
            out[key + "_tokens"] = tokens
        free, cons = out[f"batch{rows}_free"], out[f"batch{rows}_constrained"]
        out[f"batch{rows}_cost"] = round(1 - cons / free, 4) if free else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from slmops.engines import open_engine
    from slmops.models.store import ModelStore

    load_before = os.getloadavg()
    store = ModelStore()
    engines = [("torch", args.model)]
    if not args.no_onnx:
        engines.append(("onnx", args.onnx or _convert(store, args.model)))
    per_engine = max(1, args.answers // len(engines))
    report: dict[str, Any] = {}
    for name, ref in engines:
        engine = open_engine(ref, store, threads=args.threads)
        print(f"{name}: {per_engine} answers x2 ...", file=sys.stderr)
        report[name] = {"ref": ref, **validity(engine, per_engine, args)}
        print(f"{name}: speed ...", file=sys.stderr)
        report[name]["speed"] = speed(engine, args)
        engine.close()
        del engine

    total = sum(report[n]["constrained"]["answers"] for n, _ in engines)
    valid = sum(report[n]["constrained"]["valid"] for n, _ in engines)
    free_valid = sum(report[n]["unconstrained"]["valid"] for n, _ in engines)
    print()
    print(f"{'engine':8} {'constrained valid':>18} {'unconstrained valid':>20} {'lenient':>8}   decode tok/s free -> constrained (cost)")  # noqa: E501
    for n, _ in engines:
        c, u, s = report[n]["constrained"], report[n]["unconstrained"], report[n]["speed"]
        costs = ", ".join(
            f"batch {b}: {s[f'batch{b}_free']} -> {s[f'batch{b}_constrained']} ({s[f'batch{b}_cost']:+.1%})"
            for b in (1, args.batch_size)
        )
        print(f"{n:8} {c['valid']:>8}/{c['answers']:<9} {u['valid']:>10}/{u['answers']:<9} "
              f"{u['valid_rate_lenient']:>7.0%}   {costs}")  # fmt: skip
    worst = max(report[n]["speed"][f"batch{b}_cost"] for n, _ in engines for b in (1, args.batch_size))
    print(f"constrained answers valid: {valid}/{total} ({valid / total:.1%}); unconstrained: {free_valid}/{total}")
    print(f"worst decode cost of constrained decoding: {worst:.1%} (target <= {TARGET_COST:.0%})")
    summary = {
        "bench": "structured_output",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "args": vars(args),
        "constrained_valid_rate": round(valid / total, 4),
        "unconstrained_valid_rate": round(free_valid / total, 4),
        "worst_cost": worst,
        "target_cost": TARGET_COST,
        "engines": report,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
