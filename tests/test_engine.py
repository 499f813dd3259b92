from __future__ import annotations

import pytest

from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.engines.text import IncrementalDecoder, StopMatcher
from slmops.errors import EngineError

PROMPTS = ["Hello world", "The capital of France is", "def add(a, b):", "héllo 世界 🙂", "Questions"]


def greedy(n: int = 12, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=n, temperature=0.0, **kw)


def test_batched_equals_one_by_one_under_greedy(tiny_engine):
    reqs = [GenerationRequest(prompt=p, params=greedy(10 + i)) for i, p in enumerate(PROMPTS)]
    batched = tiny_engine.generate(reqs)
    single = [tiny_engine.generate([r])[0] for r in reqs]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.completion_tokens for b in batched] == [s.completion_tokens for s in single]
    assert [b.prompt_tokens for b in batched] == [tiny_engine.count_tokens(r) for r in reqs]


def test_max_tokens_and_length_finish(tiny_engine):
    # a random tiny model rarely emits its end token, so 7 tokens ends on length
    res = tiny_engine.generate([GenerationRequest(prompt="Hello", params=greedy(7))])[0]
    assert res.completion_tokens <= 7
    if res.finish_reason == "length":
        assert res.completion_tokens == 7


def test_same_seed_same_output_alone_or_in_batch(tiny_engine):
    sampled = GenerationParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    req = GenerationRequest(prompt="Hello world", params=sampled)
    a = tiny_engine.generate([req])[0].text
    b = tiny_engine.generate([req])[0].text
    other = GenerationRequest(prompt="The capital", params=GenerationParams(max_tokens=5, temperature=1.0, seed=9))
    c = tiny_engine.generate([other, req])[1].text
    assert a == b == c
    different = tiny_engine.generate(
        [GenerationRequest(prompt="Hello world", params=GenerationParams(max_tokens=16, temperature=1.0, seed=99))]
    )[0].text
    assert different != a


def test_stop_sequence_cuts_output_in_generate_and_stream(tiny_engine):
    base = tiny_engine.generate([GenerationRequest(prompt="Hello world", params=greedy(24))])[0].text
    assert len(base) > 6
    stop = base[3:5]
    res = tiny_engine.generate([GenerationRequest(prompt="Hello world", params=greedy(24, stop=(stop,)))])[0]
    assert res.text == base[: base.find(stop)]
    assert res.finish_reason == "stop"
    chunks = list(tiny_engine.stream(GenerationRequest(prompt="Hello world", params=greedy(24, stop=(stop,)))))
    streamed = "".join(c.text for c in chunks)
    assert streamed == res.text
    assert stop not in streamed
    assert chunks[-1].finish_reason == "stop"


def test_stream_matches_generate_and_reports_usage(tiny_engine):
    req = GenerationRequest(prompt="héllo 世界", params=greedy(20))
    res = tiny_engine.generate([req])[0]
    chunks = list(tiny_engine.stream(req))
    assert "".join(c.text for c in chunks) == res.text
    assert chunks[-1].finish_reason == res.finish_reason
    assert chunks[-1].completion_tokens == res.completion_tokens
    assert chunks[-1].prompt_tokens == res.prompt_tokens


def test_incremental_decoder_never_splits_multibyte_characters(tiny_engine):
    tok = tiny_engine.tokenizer
    text = "héllo 世界 こんにちは 🙂 ünïcödé"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    single = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in single), "test needs a tokenizer that splits characters across tokens"
    dec = IncrementalDecoder(lambda xs: tok.decode(xs, skip_special_tokens=True))
    deltas = [dec.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_matcher_holds_back_partial_stop_strings():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc "
    assert m.feed("N") == ""
    assert m.feed("x") == "ENx"
    assert m.feed(" more EN") == " more "
    assert m.feed("D tail") == ""
    assert m.stopped and m.text == "abc ENx more "


def test_chat_template_applied(tiny_engine):
    req = GenerationRequest(messages=(Message("user", "Hello"),), params=greedy(4))
    ids = tiny_engine.prompt_ids(req)
    text = tiny_engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nHello<|im_end|>") and text.endswith("<|im_start|>assistant\n")


def test_end_of_turn_token_stops_generation(tiny_model_dir):
    """Biasing the model towards <|im_end|> must end the answer with finish_reason 'stop'."""
    import torch

    from slmops.engines.torch_engine import TorchEngine

    engine = TorchEngine.from_path(tiny_model_dir)
    eos = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine.model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    res = engine.generate([GenerationRequest(prompt="Hello", params=greedy(30))])[0]
    assert res.finish_reason == "stop" and res.completion_tokens == 1 and res.text == ""


def test_prompt_longer_than_context_is_a_clear_error(tiny_engine):
    long = "Hello world " * 400
    with pytest.raises(EngineError, match="context window"):
        tiny_engine.generate([GenerationRequest(prompt=long, params=greedy(4))])


def test_invalid_params_rejected():
    with pytest.raises(EngineError, match="temperature"):
        GenerationParams(temperature=-1)
    with pytest.raises(EngineError, match="top_p"):
        GenerationParams(top_p=0)
    with pytest.raises(EngineError, match="exactly one"):
        GenerationRequest()
