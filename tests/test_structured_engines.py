"""Constrained decoding and logprobs on both local engines: the ONNX GenAI engine masks each
row's logits itself (``get_logits``/``set_logits``), so greedy answers match the torch engine's."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.engines.grammar import json_schema_grammar

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["name", "n"],
}


@pytest.fixture(scope="module")
def ort_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from slmops.engines.ortgenai_engine import OrtGenAIEngine
    from slmops.optimize.onnx_export import build_onnx

    out = tmp_path_factory.mktemp("onnx-structured") / "fp32"
    build_onnx(tiny_model_dir, out, precision="fp32")
    engine = OrtGenAIEngine(out, threads=1)
    yield engine
    engine.close()


def _requests() -> list[GenerationRequest]:
    grammar = json_schema_grammar(SCHEMA)
    greedy = [
        GenerationRequest.chat(text, GenerationParams(max_tokens=48, grammar=g, logprobs=2))
        for text in ("Hello", "The capital of France?")
        for g in (grammar, None)
    ]
    sampled = [GenerationRequest.chat("Hi", GenerationParams(max_tokens=48, temperature=1.0, seed=s, grammar=grammar))
               for s in range(3)]  # fmt: skip
    return greedy + sampled


def test_both_engines_give_valid_json_and_the_same_greedy_answers(ort_engine, tiny_engine):
    requests = _requests()
    ort = ort_engine.generate(requests)
    torch_ = tiny_engine.generate(requests)
    for req, res in zip(requests, ort + torch_, strict=False):
        if req.params.grammar is not None:
            assert res.finish_reason == "stop"
            jsonschema.validate(json.loads(res.text), SCHEMA)
    for r in ort[4:] + torch_[4:]:
        jsonschema.validate(json.loads(r.text), SCHEMA)
    for a, b in zip(ort[:4], torch_[:4], strict=True):  # greedy: identical text and log-probabilities
        assert a.text == b.text
        assert [lp.token_id for lp in a.logprobs] == [lp.token_id for lp in b.logprobs]
        assert sum(lp.logprob for lp in a.logprobs) == pytest.approx(sum(lp.logprob for lp in b.logprobs), abs=1e-3)


def test_onnx_stream_carries_logprobs_and_stops_with_the_grammar(ort_engine):
    request = _requests()[0]
    chunks = list(ort_engine.stream(request))
    text = "".join(c.text for c in chunks)
    assert json.loads(text) and chunks[-1].finish_reason == "stop"
    assert sum(len(c.logprobs) for c in chunks) == len(ort_engine.generate([request])[0].logprobs)
