"""Batched generation with a per-request retry, the one loop the batch callers use
(``slmops generate``, ``eval``, the LLM judge, ``validate``; ``distill generate`` journals
whole batches and stops at a hard failure so ``--resume`` continues, so it calls the engine
directly).

Requests go to the engine ``batch_size`` at a time. When a batch raises an
:class:`~slmops.errors.SlmopsError` (one bad request, a remote hiccup), its requests are
retried one at a time, so one failure costs one answer, not the batch. A request that still
fails either stops the run (``stop_on_error=True``: its error propagates, for callers that
resume) or gets ``None`` in its slot (callers that score what they got).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from slmops.engines.base import Engine, GenerationRequest, GenerationResult
from slmops.errors import SlmopsError


def generate_batched(
    engine: Engine,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    stop_on_error: bool = False,
) -> list[GenerationResult | None]:
    """One result per request, in order (``None``: failed alone too, with ``stop_on_error`` off);
    ``on_batch(done)`` after each batch."""
    results: list[GenerationResult | None] = []
    for start in range(0, len(requests), max(1, batch_size)):
        chunk = list(requests[start : start + max(1, batch_size)])
        try:
            results.extend(engine.generate(chunk))
        except SlmopsError:
            if len(chunk) == 1 and stop_on_error:
                raise
            for request in chunk:
                try:
                    results.append(engine.generate([request])[0])
                except SlmopsError:
                    if stop_on_error:
                        raise
                    results.append(None)
        if on_batch:
            on_batch(len(results))
    return results
