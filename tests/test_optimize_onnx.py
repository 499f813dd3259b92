"""ONNX GenAI export and engine on the tiny llama: the fp32 build generates exactly what the
torch engine generates (batched, streamed, chat, stop sequences), stops at the end-of-turn
token, keeps seeds reproducible, and the int4 build runs and is smaller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.errors import SlmopsError
from slmops.optimize.onnx_export import build_onnx, check_onnx_options, end_of_turn_ids

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def onnx_fp32(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    build_onnx(tiny_model_dir, out, precision="fp32")
    return out


@pytest.fixture(scope="module")
def ort_engine(onnx_fp32: Path):
    from slmops.engines.ortgenai_engine import OrtGenAIEngine

    engine = OrtGenAIEngine(onnx_fp32, threads=1)
    yield engine
    engine.close()


def _requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt="The capital of France is", params=GenerationParams(max_tokens=12)),
        GenerationRequest.chat("Hello! How are you?", GenerationParams(max_tokens=20)),
        GenerationRequest(prompt="héllo wörld, café", params=GenerationParams(max_tokens=16, stop=("ld",))),
        GenerationRequest(prompt="Questions", params=GenerationParams(max_tokens=5)),
    ]


def _view(results):
    return [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in results]


def test_build_writes_genai_folder_with_end_of_turn_ids(onnx_fp32: Path, tiny_model_dir: Path):
    cfg = json.loads((onnx_fp32 / "genai_config.json").read_text())
    assert (onnx_fp32 / "model.onnx").exists() and (onnx_fp32 / "tokenizer.json").exists()
    eos = cfg["model"]["eos_token_id"]
    assert (eos if isinstance(eos, list) else [eos]) == end_of_turn_ids(tiny_model_dir) == [2]  # <|im_end|>


def test_fp32_greedy_output_equals_the_torch_engine(ort_engine, tiny_engine):
    reqs = _requests()
    expected = _view(tiny_engine.generate(reqs))
    assert _view(ort_engine.generate(reqs)) == expected  # one padded batch
    assert [_view(ort_engine.generate([r]))[0] for r in reqs] == expected  # alone
    assert ort_engine.count_tokens(reqs[1]) == tiny_engine.count_tokens(reqs[1])


def test_stream_matches_generate_and_ends_with_counts(ort_engine, tiny_engine):
    free = ort_engine.generate([GenerationRequest(prompt="Hello world", params=GenerationParams(max_tokens=16))])[0]
    stop = free.text[len(free.text) // 2 :][:2]  # a stop sequence the model is sure to produce
    req = GenerationRequest(prompt="Hello world", params=GenerationParams(max_tokens=16, stop=(stop,)))
    chunks = list(ort_engine.stream(req))
    final = ort_engine.generate([req])[0]
    assert "".join(c.text for c in chunks) == final.text == free.text[: free.text.index(stop)]
    assert chunks[-1].finish_reason == final.finish_reason == "stop"
    assert chunks[-1].completion_tokens == final.completion_tokens
    assert _view([final]) == _view(tiny_engine.generate([req]))


def test_generation_stops_at_the_end_of_turn_token(ort_engine, tiny_engine, monkeypatch):
    # make <|im_end|> the most likely next token: the engine must stop there, as torch does
    prompt = "The capital of France is"
    greedy = ort_engine.generate([GenerationRequest(prompt=prompt, params=GenerationParams(max_tokens=3))])[0]
    first = ort_engine.tokenizer(greedy.text, add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr(ort_engine, "eos_ids", {first})
    r = ort_engine.generate([GenerationRequest(prompt=prompt, params=GenerationParams(max_tokens=50))])[0]
    assert (r.text, r.finish_reason, r.completion_tokens) == ("", "stop", 1)


def test_seeded_sampling_is_reproducible_alone_or_in_a_batch(ort_engine):
    sampled = GenerationRequest(prompt="Hello", params=GenerationParams(max_tokens=12, temperature=1.0, seed=7))
    alone = ort_engine.generate([sampled])[0].text
    batched = ort_engine.generate([_requests()[0], sampled, _requests()[3]])[1].text
    other = ort_engine.generate(
        [GenerationRequest(prompt="Hello", params=GenerationParams(max_tokens=12, temperature=1.0, seed=8))]
    )[0].text
    assert alone == batched
    assert alone != other


@pytest.mark.parametrize(("algorithm", "symmetric"), [("hqq", True), (None, True), (None, False)])
def test_int4_build_runs_and_is_smaller(
    onnx_fp32: Path, tiny_model_dir: Path, tmp_path: Path, algorithm: str | None, symmetric: bool
):
    from slmops.engines.ortgenai_engine import OrtGenAIEngine
    from slmops.models.store import folder_size

    out = tmp_path / "int4"
    info = build_onnx(
        tiny_model_dir, out, precision="int4", block_size=32, symmetric=symmetric, accuracy_level=4, algorithm=algorithm
    )
    assert f"is_symmetric={str(symmetric).lower()}" in info["builder_extra_options"]
    if algorithm == "hqq":  # HQQ in the fast kernel's layout
        assert info["hqq"]["offset_layout"] == info["hqq"]["matmuls"] - 1 > 0  # every MatMul but the LM head
    else:
        assert "algo_config=k_quant_mixed" in info["builder_extra_options"]  # the int4 default
    assert folder_size(out) < 0.6 * folder_size(onnx_fp32)
    engine = OrtGenAIEngine(out, threads=1)  # asymmetric tied embeddings used to build an unloadable graph
    r = engine.generate([GenerationRequest.chat("Hi", GenerationParams(max_tokens=8))])[0]
    assert r.completion_tokens >= 1 and r.finish_reason in ("stop", "length")


def test_option_problems_are_reported_together():
    problems = check_onnx_options("fp16", "cpu", 48, 9)
    assert len(problems) == 3
    assert any("--device cuda" in p for p in problems)
    assert check_onnx_options("int4", "cpu", 32, 4) == []


def test_unconvertible_folder_gives_a_clear_error(tiny_model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchModel"], "model_type": "nosuch"}')
    with pytest.raises(SlmopsError, match="ONNX model builder could not convert"):
        build_onnx(broken, tmp_path / "out", precision="fp32")


def test_wrong_builder_eos_is_replaced_by_the_end_of_turn_ids(tiny_model_dir: Path, tmp_path: Path):
    import shutil

    from slmops.optimize.onnx_export import fix_eos_ids

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    gen = json.loads((src / "generation_config.json").read_text())
    (src / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 0}))  # <|endoftext|>
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "genai_config.json").write_text(json.dumps({"model": {"eos_token_id": 0, "pad_token_id": 0}}))
    assert fix_eos_ids(onnx_dir, src) == [0, 2]  # the chat template ends turns with <|im_end|> (2)
    assert json.loads((onnx_dir / "genai_config.json").read_text())["model"]["eos_token_id"] == [0, 2]


def test_asking_for_an_adapter_is_a_clear_error(ort_engine):
    from slmops.errors import EngineError

    with pytest.raises(EngineError, match="it has no separate adapters"):
        ort_engine.generate([GenerationRequest(prompt="Hi", adapter="qa")])
