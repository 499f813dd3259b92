"""Continuous batching and prefix caching of the ONNX engine (and the prefix cache itself) on the
tiny llama: a batch gives exactly what one-at-a-time gives (greedy and seeded sampling), rows may
join a running batch, cached prefixes give the same tokens as a cold prefill, and the cache
stays within its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.engines.prefix_cache import PrefixCache, shared_prefix_groups

SYSTEM = "You are a helpful assistant. Answer in one short sentence, and be kind and precise."


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime_genai")
    from slmops.optimize.onnx_export import build_onnx

    out = tmp_path_factory.mktemp("onnx-batch") / "fp32"
    build_onnx(tiny_model_dir, out, precision="fp32")
    return out


@pytest.fixture()
def engine(onnx_dir: Path):
    from slmops.engines.ortgenai_engine import OrtGenAIEngine

    eng = OrtGenAIEngine(onnx_dir, threads=1)
    assert eng.graph is not None  # the decoder batcher drives the builder's graph
    yield eng
    eng.close()


def _requests(seed: int | None = None, temperature: float = 0.0) -> list[GenerationRequest]:
    texts = ["Hello! How are you?", "The capital of France", "héllo wörld, café", "two plus two", "Questions"]
    return [
        GenerationRequest.chat(t, GenerationParams(max_tokens=6 + 3 * i, temperature=temperature,
                                                   seed=None if seed is None else seed + i), system=SYSTEM)
        for i, t in enumerate(texts)
    ] + [GenerationRequest(prompt="The capital of", params=GenerationParams(max_tokens=9, stop=("Pa",),
                                                                          temperature=temperature, seed=seed))]


def _view(results):
    return [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in results]


def _cold(engine):
    engine.prefix_cache.clear()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_equals_one_at_a_time(engine, temperature):
    reqs = _requests(seed=7, temperature=temperature)
    alone = []
    for r in reqs:
        _cold(engine)
        alone.append(_view(engine.generate([r]))[0])
    _cold(engine)
    assert _view(engine.generate(reqs)) == alone
    assert _view(engine.generate(reqs)) == alone  # again, now every shared prefix is cached


def test_greedy_equals_the_runtime_generator(engine, onnx_dir: Path):
    """The batcher's own decode loop gives what onnxruntime-genai's generator gives."""
    import onnxruntime_genai as og

    ids = engine.prompt_ids(_requests()[0])
    model = og.Model(og.Config(str(onnx_dir)))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray([ids], dtype=np.int32))
    expected = []
    while not gen.is_done():
        gen.generate_next_token()
        expected.append(int(gen.get_next_tokens()[0]))
    logits = engine.logits(ids + expected[:-1])
    assert [int(t) for t in logits[len(ids) - 1 :].argmax(-1)] == expected


def test_rows_join_a_running_batch(engine):
    reqs = _requests(seed=3, temperature=1.0)
    _cold(engine)
    expected = _view(engine.generate(reqs))
    batch = engine.new_batch()
    texts: dict[int, list[str]] = {}
    finals = {}
    ids = [batch.add(reqs[0]), batch.add(reqs[1])]
    step = 0
    while batch or len(ids) < len(reqs):
        if step in (1, 2, 4, 5) and len(ids) < len(reqs):  # join mid-batch, one or two at a time
            ids.append(batch.add(reqs[len(ids)]))
            if step == 4:
                ids.append(batch.add(reqs[len(ids)]))
        for ev in batch.step():
            texts.setdefault(ev.id, []).append(ev.text)
            if ev.finish_reason:
                finals[ev.id] = ev
        step += 1
    got = [("".join(texts[i]), finals[i].finish_reason, finals[i].prompt_tokens, finals[i].completion_tokens)
           for i in ids]
    assert got == expected
    assert batch.capacity == (0, 0)  # an idle batch frees its KV buffers


def test_cancelled_row_leaves_and_others_continue(engine):
    reqs = _requests()
    expected = _view(engine.generate(reqs[:3]))
    texts: dict[int, list[str]] = {}
    finals = {}
    batch = engine.new_batch()
    ids = [batch.add(r) for r in reqs[:3]]
    victim = batch.add(GenerationRequest(prompt="x y z", params=GenerationParams(max_tokens=50)))
    for n in range(60):
        if n == 2:
            batch.cancel(victim)
        for ev in batch.step():
            assert ev.id != victim or n < 2
            texts.setdefault(ev.id, []).append(ev.text)
            if ev.finish_reason:
                finals[ev.id] = ev
        if not batch:
            break
    got = [("".join(texts[i]), finals[i].finish_reason, finals[i].prompt_tokens, finals[i].completion_tokens)
           for i in ids]
    assert got == expected and victim not in finals


def test_prefix_cache_hits_give_the_same_tokens_as_misses(engine):
    reqs = _requests(seed=11, temperature=1.0)[:5]  # all open with the same system prompt
    cold = []
    for r in reqs:
        _cold(engine)
        cold.append(_view(engine.generate([r]))[0])
    _cold(engine)
    stats = engine.prefix_cache.stats
    hits0 = stats.hits
    warm = [_view(engine.generate([r]))[0] for r in reqs]  # one at a time: each reuses the system prompt
    assert warm == cold
    assert stats.hits - hits0 == len(reqs) - 1 and stats.hit_tokens > 0


def test_requests_arriving_together_prefill_their_shared_prefix_once(engine, monkeypatch):
    reqs = _requests()[:5]
    expected = [_view(engine.generate([r]))[0] for r in reqs]
    _cold(engine)
    prefill_tokens = []
    run = engine.graph.run

    def counting(ids, totals, bufs):
        prefill_tokens.append(ids.size)
        return run(ids, totals, bufs)

    monkeypatch.setattr(engine.graph, "run", counting)
    assert _view(engine.generate(reqs)) == expected
    prompts = [engine.prompt_ids(r) for r in reqs]
    (members, shared), = shared_prefix_groups(prompts, engine.prefix_cache.block)
    assert len(members) == 5 and shared >= 16
    decode_steps = len(prefill_tokens) - 1 - len(reqs)  # one shared prefill, one suffix prefill per row
    assert sum(prefill_tokens[: 1 + len(reqs)]) == shared + sum(len(p) - shared for p in prompts)
    assert decode_steps > 0
    assert engine.prefix_cache.stats.hits >= len(reqs) - 1


def test_prefix_cache_evicts_least_recently_used_within_budget():
    block_bytes = 2 * 4 * 4  # one layer, key+value of [1, 4, 1] float32... per block of 4 tokens
    cache = PrefixCache(budget_bytes=3 * block_bytes, block=4)

    def kv(a, b):
        return [(np.full((1, b - a, 1), a, np.float32), np.full((1, b - a, 1), a, np.float32))]

    p1, p2 = list(range(0, 9)), list(range(100, 109))
    assert cache.insert(p1, kv) == 2 and cache.bytes == 2 * block_bytes
    assert cache.lookup(p1)[0] == 8  # both blocks (one token left to prefill)
    assert cache.insert(p2, kv) == 2  # 4 blocks > budget of 3: p1's least recently used block goes
    assert cache.bytes <= cache.budget_bytes and cache.stats.evictions == 1
    assert cache.lookup(p2)[0] == 8
    assert cache.lookup(p1)[0] == 0  # its first block is gone, so the second cannot be reached
    assert cache.lookup(list(range(0, 5)) + [7, 7])[0] == 0
    assert cache.stats.misses == 2 and cache.stats.hits == 2


def test_prefix_cache_keys_on_every_earlier_token_and_the_namespace():
    cache = PrefixCache(block=2)

    def kv(a, b):
        return [(np.zeros((1, b - a, 1)), np.zeros((1, b - a, 1)))]

    cache.insert([1, 2, 3, 4, 5], kv, namespace="a")
    assert cache.lookup([1, 2, 3, 4, 9])[0] == 0  # other namespace
    assert cache.lookup([1, 2, 3, 4, 9], "a")[0] == 4
    assert cache.lookup([1, 2, 7, 4, 9], "a")[0] == 2  # the second block differs
    assert cache.lookup([1, 2, 3, 4], "a")[0] == 2  # the last token is always prefilled


# -- the torch engine's prefix cache ----------------------------------------------------------
def test_torch_prefix_cache_hits_give_the_same_tokens_as_misses(tiny_model_dir: Path):
    from slmops.engines.torch_engine import TorchEngine

    eng = TorchEngine.from_path(tiny_model_dir, threads=1)
    reqs = _requests(seed=5, temperature=1.0)
    cold = []
    for r in reqs:
        eng.prefix_cache.clear()
        cold.append(_view(eng.generate([r]))[0])
    eng.prefix_cache.clear()
    together = _view(eng.generate(reqs))  # arriving together: the shared system prompt prefilled once
    assert eng.prefix_cache.stats.hits >= 4
    hits = eng.prefix_cache.stats.hits
    warm = [_view(eng.generate([r]))[0] for r in reqs]  # one at a time, all from the cache
    assert eng.prefix_cache.stats.hits - hits == 5
    assert together == cold and warm == cold
    # the cache holds one chat's prompt; the other chats, arriving together, hit the same system
    # prompt blocks and prefill their rests in one forward (left-padded after the prefix)
    eng.prefix_cache.clear()
    eng.generate([reqs[0]])
    shapes: list[tuple[int, int]] = []
    hook = eng.model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    assert _view(eng.generate(reqs[1:])) == cold[1:]
    hook.remove()
    prefills = [s for s in shapes if s[1] > 1]
    assert len(prefills) == 2 and prefills[0][0] == 1  # the raw prompt's cold prefill, then
    assert prefills[1][0] == len(reqs) - 2  # the 4 other chats' rests in one forward
    eng.prefix_cache = None  # switched off: the same again
    assert _view(eng.generate(reqs)) == cold


def test_torch_prefix_cache_stays_within_a_small_budget(tiny_model_dir: Path):
    from slmops.engines.torch_engine import TorchEngine

    eng = TorchEngine.from_path(tiny_model_dir, threads=1)
    eng.prefix_cache = PrefixCache(budget_bytes=3 * 2 * 2 * 2 * 16 * 16 * 4, block=16)  # 3 blocks of 2 layers
    reqs = [GenerationRequest(prompt=f"{i} " * 40, params=GenerationParams(max_tokens=3)) for i in range(4)]
    expected = [_view(eng.generate([r]))[0] for r in reqs]
    assert eng.prefix_cache.bytes <= eng.prefix_cache.budget_bytes and eng.prefix_cache.stats.evictions > 0
    assert [_view(eng.generate([r]))[0] for r in reqs] == expected
