"""The llama.cpp engine never shares its one context between requests: concurrent requests
(threads) give exactly the sequential answers, two streams on one thread are refused, and the
scheduler's batch for it runs requests one after another."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slmops.engines.base import Engine, GenerationParams, GenerationRequest, StreamChunk
from slmops.engines.batching import SerialBatch
from slmops.errors import EngineError


class OneSequenceEngine(Engine):
    """Streams ``n`` numbered chunks per request; fails if two streams are ever open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.order: list[str] = []

    def generate(self, requests):  # pragma: no cover - not used
        raise NotImplementedError

    def count_tokens(self, request):  # pragma: no cover - not used
        return 1

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        assert self.open == 0, "two sequences on one context"
        self.open += 1
        try:
            for i in range(request.params.max_tokens):
                self.order.append(f"{request.prompt}{i}")
                yield StreamChunk(f"{request.prompt}{i} ")
            yield StreamChunk("", finish_reason="length", prompt_tokens=1, completion_tokens=request.params.max_tokens)
        finally:
            self.open -= 1


def test_serial_batch_runs_one_request_at_a_time_in_arrival_order():
    eng = OneSequenceEngine()
    batch = SerialBatch(eng)
    ids = [batch.add(GenerationRequest(prompt=p, params=GenerationParams(max_tokens=3))) for p in "abc"]
    texts: dict[int, str] = {i: "" for i in ids}
    finished = []
    steps = 0
    while batch:
        if steps == 2:
            batch.cancel(ids[1])  # still queued: never starts
        for ev in batch.step():
            texts[ev.id] += ev.text
            if ev.finish_reason:
                finished.append(ev.id)
        steps += 1
    assert finished == [ids[0], ids[2]]
    assert texts[ids[0]] == "a0 a1 a2 " and texts[ids[2]] == "c0 c1 c2 " and texts[ids[1]] == ""
    assert eng.order == ["a0", "a1", "a2", "c0", "c1", "c2"] and eng.open == 0


def test_serial_batch_cancels_the_running_request():
    eng = OneSequenceEngine()
    batch = SerialBatch(eng)
    a = batch.add(GenerationRequest(prompt="a", params=GenerationParams(max_tokens=50)))
    b = batch.add(GenerationRequest(prompt="b", params=GenerationParams(max_tokens=2)))
    batch.step()
    batch.cancel(a)
    events = []
    while batch:
        events += batch.step()
    assert eng.open == 0 and [e.id for e in events] == [b, b, b] and events[-1].finish_reason == "length"


@pytest.fixture(scope="module")
def llama_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("llama_cpp")
    from slmops.engines.llamacpp_engine import LlamaCppEngine
    from slmops.optimize.gguf_export import write_gguf

    path = tmp_path_factory.mktemp("gguf-lock") / "tiny.gguf"
    write_gguf(tiny_model_dir, path, "f16", name="tiny")
    engine = LlamaCppEngine(path, threads=1, n_ctx=256)
    yield engine
    engine.close()


def _reqs() -> list[GenerationRequest]:
    texts = ["Hello! How are you?", "The capital of France", "héllo wörld, café", "two plus two", "Questions?"]
    return [GenerationRequest.chat(t, GenerationParams(max_tokens=12, temperature=0.8, seed=i)) for i, t in
            enumerate(texts)] + [GenerationRequest(prompt="Paris", params=GenerationParams(max_tokens=10))]


def test_concurrent_requests_give_the_sequential_answers(llama_engine):
    reqs = _reqs()
    sequential = [llama_engine.generate([r])[0].text for r in reqs]
    streamed = ["".join(c.text for c in llama_engine.stream(r)) for r in reqs]
    assert streamed == sequential
    with ThreadPoolExecutor(len(reqs)) as pool:
        gen = list(pool.map(lambda r: llama_engine.generate([r])[0].text, reqs))
        streams = list(pool.map(lambda r: "".join(c.text for c in llama_engine.stream(r)), reqs * 2))
    assert gen == sequential and streams == sequential * 2


def test_two_streams_on_one_thread_are_refused(llama_engine):
    reqs = _reqs()
    first = llama_engine.stream(reqs[0])
    next(first)
    with pytest.raises(EngineError, match="already generating"):
        next(llama_engine.stream(reqs[1]))
    first.close()  # closing the stream frees the context for the next request
    assert llama_engine.generate([reqs[1]])[0].text
    done = threading.Event()
    threading.Thread(target=lambda: (llama_engine.generate([reqs[2]]), done.set())).start()
    assert done.wait(30)
