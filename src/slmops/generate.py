"""Batched generation over a prompts file, and the built-in demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmops.data.records import write_jsonl_atomic
from slmops.engines.base import Engine, GenerationRequest, GenerationResult
from slmops.engines.batched import generate_batched


@dataclass(frozen=True)
class BatchSummary:
    records: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 2)}


def generate_batches(
    engine: Engine,
    requests: list[GenerationRequest],
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[GenerationResult], BatchSummary]:
    t0 = time.perf_counter()
    results = [r for r in generate_batched(engine, requests, batch_size=batch_size, on_batch=on_batch,
                                           stop_on_error=True) if r is not None]
    elapsed = time.perf_counter() - t0
    summary = BatchSummary(
        records=len(results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        seconds=elapsed,
    )
    return results, summary


def generate_file(
    engine: Engine,
    pairs: list[tuple[dict[str, Any], GenerationRequest]],
    output_path: Path,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> BatchSummary:
    """Answer every (record, request) pair from :func:`read_prompt_file`; write each record
    plus its answer to ``output_path`` (JSONL, written atomically once all answers are in)."""
    results, summary = generate_batches(engine, [req for _, req in pairs], batch_size=batch_size, on_batch=on_batch)
    write_jsonl_atomic(
        output_path,
        (
            {
                **rec,
                "output": res.text,
                "finish_reason": res.finish_reason,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
            }
            for (rec, _), res in zip(pairs, results, strict=True)
        ),
    )
    return summary
