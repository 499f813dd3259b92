"""The one batched-generation loop: batches of ``batch_size``; a failing batch is retried one
request at a time; a request that still fails holds ``None`` or stops the run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from slmops.engines.base import Engine, GenerationRequest, GenerationResult, StreamChunk
from slmops.engines.batched import generate_batched
from slmops.errors import EngineError


class Echo(Engine):
    name = "echo"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(len(requests))
        if any("BOOM" in (r.prompt or "") for r in requests):
            raise EngineError("exploded")
        return [GenerationResult((r.prompt or "").upper(), 1, 2, "stop", 0.0) for r in requests]

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        yield StreamChunk("", finish_reason="stop")

    def count_tokens(self, request: GenerationRequest) -> int:
        return 1


def _reqs(*prompts: str) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=p) for p in prompts]


def test_batches_and_progress():
    engine, seen = Echo(), []
    out = generate_batched(engine, _reqs("a", "b", "c"), batch_size=2, on_batch=seen.append)
    assert [r.text for r in out] == ["A", "B", "C"] and engine.calls == [2, 1] and seen == [2, 3]


def test_a_failed_batch_is_retried_one_by_one_and_keeps_the_others():
    engine = Echo()
    out = generate_batched(engine, _reqs("a", "BOOM", "c"), batch_size=3)
    assert [r and r.text for r in out] == ["A", None, "C"] and engine.calls == [3, 1, 1, 1]


def test_stop_on_error_raises_the_request_s_own_error():
    engine = Echo()
    with pytest.raises(EngineError, match="exploded"):
        generate_batched(engine, _reqs("a", "BOOM", "c"), batch_size=3, stop_on_error=True)
    assert engine.calls == [3, 1, 1]  # "a" answered alone, "BOOM" failed alone: stop there
