"""Continuous batching at the engine level: requests join a running batch and leave it."""

from __future__ import annotations

from slmops.engines.base import GenerationParams, GenerationRequest, StreamChunk
from slmops.engines.batching import DecodeBatch, StreamBatch


def req(prompt: str, n: int, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, params=GenerationParams(max_tokens=n, temperature=0.0, **kw))


def drain(batch, texts: dict[int, list[str]], finals: dict, steps: int | None = None) -> None:
    done = 0
    while batch and (steps is None or done < steps):
        for ev in batch.step():
            texts.setdefault(ev.id, []).append(ev.text)
            if ev.finish_reason is not None:
                finals[ev.id] = ev
        done += 1


def test_request_joining_mid_batch_matches_running_alone(tiny_engine):
    long_req, late_req = req("Hello world", 40), req("The capital of France is", 12)
    alone = tiny_engine.generate([long_req])[0].text, tiny_engine.generate([late_req])[0].text
    batch: DecodeBatch = tiny_engine.new_batch()
    texts: dict[int, list[str]] = {}
    finals: dict = {}
    a = batch.add(long_req)
    drain(batch, texts, finals, steps=7)  # the first request is 7 tokens in, its cache is longer than the newcomer's
    assert batch.running == 1
    b = batch.add(late_req)
    drain(batch, texts, finals, steps=1)
    assert batch.running == 2  # joined at the step boundary, not after the first finished
    drain(batch, texts, finals)
    assert ("".join(texts[a]), "".join(texts[b])) == alone
    assert finals[b].completion_tokens == tiny_engine.generate([late_req])[0].completion_tokens


def test_finished_rows_leave_and_padding_is_trimmed(tiny_engine):
    batch = tiny_engine.new_batch()
    short, long_ = batch.add(req("The capital of France is Paris and", 3)), batch.add(req("Hi", 30))
    texts: dict[int, list[str]] = {}
    finals: dict = {}
    drain(batch, texts, finals, steps=3)
    assert short in finals and batch.running == 1
    # the long prompt's padding columns are gone once the short row left
    assert batch._mask.shape[1] == len(tiny_engine.prompt_ids(req("Hi", 1))) + 2
    assert bool(batch._mask.all())
    drain(batch, texts, finals)
    assert "".join(texts[long_]) == tiny_engine.generate([req("Hi", 30)])[0].text


def test_cancelled_row_leaves_and_others_are_unaffected(tiny_engine):
    batch = tiny_engine.new_batch()
    keep, drop = batch.add(req("Hello world", 20)), batch.add(req("Questions", 200))
    texts: dict[int, list[str]] = {}
    finals: dict = {}
    drain(batch, texts, finals, steps=4)
    batch.cancel(drop)
    drain(batch, texts, finals, steps=1)
    assert batch.running == 1 and len(texts[drop]) == 4
    drain(batch, texts, finals)
    assert drop not in finals
    assert "".join(texts[keep]) == tiny_engine.generate([req("Hello world", 20)])[0].text


def test_seeded_sampling_is_the_same_when_joining_late(tiny_engine):
    sampled = GenerationRequest(prompt="Hello", params=GenerationParams(max_tokens=16, temperature=1.0, seed=7))
    alone = tiny_engine.generate([sampled])[0].text
    batch = tiny_engine.new_batch()
    texts: dict[int, list[str]] = {}
    batch.add(req("Questions and answers", 30))
    drain(batch, texts, {}, steps=5)
    late = batch.add(sampled)
    drain(batch, texts, {})
    assert "".join(texts[late]) == alone


class _FakeEngine:
    def stream(self, request):
        for word in request.prompt.split():
            yield StreamChunk(word + " ")
        yield StreamChunk("", finish_reason="stop", prompt_tokens=1, completion_tokens=len(request.prompt.split()))


def test_stream_batch_interleaves_any_engine():
    batch = StreamBatch(_FakeEngine())
    a, b = batch.add(req("a b c", 5)), batch.add(req("x y", 5))
    first = batch.step()
    assert [(e.id, e.text) for e in first] == [(a, "a "), (b, "x ")]
    texts: dict[int, list[str]] = {}
    finals: dict = {}
    drain(batch, texts, finals)
    assert "".join(texts[a]) == "b c " and finals[b].completion_tokens == 2 and not batch
