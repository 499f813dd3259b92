"""The bundle probe: a few prompts with expected answers that travel inside the artifact's
config (so the manifest digest and the signature cover them) and that a device runs on a new
version before it switches to it.

A probe file is JSONL/JSON/CSV/Parquet records with ``prompt`` and ``answer`` (or ``expected``).
By default ``models push`` takes the test set recorded in the model's lineage (the
``eval_data`` of a finetune/distill step), when that file is still on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.data.records import read_records
from slmops.engines.base import Engine, GenerationParams, GenerationRequest
from slmops.errors import DataError, SlmopsError
from slmops.models.store import ModelStore

MAX_ITEMS = 32
DEFAULT_MIN_SCORE = 0.5


def load_probe(path: Path, limit: int = MAX_ITEMS) -> list[dict[str, str]]:
    items = []
    for i, rec in enumerate(read_records(Path(path))[:limit], start=1):
        prompt, expected = rec.get("prompt"), rec.get("expected", rec.get("answer", rec.get("completion")))
        if not isinstance(prompt, str) or not isinstance(expected, str):
            raise DataError(
                f"{path}: record {i} needs string fields 'prompt' and 'answer' (or 'expected').",
                'Write lines like {"prompt": "...", "answer": "billing"}.',
            )
        items.append({"prompt": prompt, "expected": expected})
    if not items:
        raise DataError(f"{path} holds no probe records.")
    return items


def default_probe(store: ModelStore, ref: str) -> tuple[list[dict[str, str]], str | None]:
    """The first test set named in the model's lineage that still exists: (items, path)."""
    from slmops.models.lineage import lineage

    for node in lineage(store, ref):
        for key in ("eval_data", "test_data"):
            named = node.record.recipe.get(key)
            for path in named if isinstance(named, dict | list) else []:
                if Path(path).is_file():
                    try:
                        return load_probe(Path(path)), str(path)
                    except SlmopsError:
                        continue
    return [], None


def score(answer: str, expected: str) -> float:
    """1.0 when the expected answer appears in the model's answer (case-insensitive)."""
    return float(expected.strip().lower() in answer.strip().lower())


def run_probe(engine: Engine, items: list[dict[str, Any]], *, max_tokens: int = 16) -> float | None:
    """The mean score of the probe on ``engine`` (greedy); ``None`` for an empty probe."""
    if not items:
        return None
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    results = engine.generate([GenerationRequest.chat(str(it["prompt"]), params) for it in items])
    return sum(score(r.text, str(it["expected"])) for r, it in zip(results, items, strict=True)) / len(items)
