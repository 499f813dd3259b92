"""GGUF export on the tiny llama: the file round-trips through the gguf reader with the
expected tensors, types and metadata, and transformers loads it back to the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slmops.errors import SlmopsError
from slmops.optimize.gguf_export import permute_qk, write_gguf


@pytest.fixture(scope="module")
def gguf_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf")
    for quant in ("f16", "q8_0", "q4_0"):
        (out / quant).mkdir()
        write_gguf(tiny_model_dir, out / quant / "tiny.gguf", quant, name="tiny")
    return out


def _field(reader, key: str):
    f = reader.fields[key]
    if len(f.data) == 1:
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype == np.uint8 else v.tolist()[0]
    return [bytes(f.parts[i]).decode() if f.parts[i].dtype == np.uint8 else f.parts[i].tolist()[0] for i in f.data]


def test_gguf_has_llama_tensors_types_and_metadata(gguf_dir: Path, tiny_model_dir: Path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, TokenType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reader = GGUFReader(str(gguf_dir / "q8_0" / "tiny.gguf"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    per_block = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up")
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in (*per_block, "ffn_down")
    }
    assert set(types) == expected  # tied embeddings: no output.weight
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["output_norm.weight"] == Q.F32
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2 and _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 16
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # a name llama.cpp knows (byte-level, GPT-2 regex)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(tok) and tokens[tok.eos_token_id] == "<|im_end|>"
    assert _field(reader, "tokenizer.ggml.token_type")[tok.eos_token_id] == TokenType.CONTROL
    assert len(_field(reader, "tokenizer.ggml.merges")) > 100
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert "<|im_start|>" in _field(reader, "tokenizer.chat_template")

    q4 = {t.name: t.tensor_type for t in GGUFReader(str(gguf_dir / "q4_0" / "tiny.gguf")).tensors}
    assert q4["blk.1.ffn_down.weight"] == Q.Q4_0
    assert q4["token_embd.weight"] == Q.Q8_0  # the tied output projection keeps 8 bits


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_transformers_loads_the_gguf_back_to_the_same_model(gguf_dir: Path, tiny_model_dir: Path, quant: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    back = AutoModelForCausalLM.from_pretrained(gguf_dir / quant, gguf_file="tiny.gguf", dtype=torch.float32)
    back_tok = AutoTokenizer.from_pretrained(gguf_dir / quant, gguf_file="tiny.gguf")
    text = "The capital of France is Paris. héllo 123 <|im_end|>"
    assert back_tok(text)["input_ids"] == tok(text)["input_ids"]
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (src(ids).logits - back(ids).logits).abs().max().item()
        greedy = [m.generate(ids, max_new_tokens=12, do_sample=False).tolist() for m in (src, back)]
    assert diff < (1e-3 if quant == "f16" else 2e-2)
    assert greedy[0] == greedy[1]


def test_qk_permutation_interleaves_rotary_halves():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows
    p = permute_qk(w, 2)
    assert p[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # rows 0,2,1,3 of each head


def test_non_llama_model_is_refused_with_a_clear_error(tiny_model_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlmopsError, match="llama-architecture.*--to onnx"):
        write_gguf(other, tmp_path / "x.gguf", "q8_0")
    with pytest.raises(SlmopsError, match="q4_0"):
        write_gguf(tiny_model_dir, tmp_path / "x.gguf", "q3_k")


def test_llama_cpp_engine_runs_the_gguf_like_the_torch_engine(gguf_dir: Path, tiny_engine):
    pytest.importorskip("llama_cpp")
    from slmops.engines.base import GenerationParams, GenerationRequest
    from slmops.engines.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(gguf_dir / "f16" / "tiny.gguf", threads=1, n_ctx=256)
    reqs = [
        GenerationRequest(prompt="The capital of France is", params=GenerationParams(max_tokens=8)),
        GenerationRequest.chat("Hello! How are you?", GenerationParams(max_tokens=8)),
    ]
    assert [engine.count_tokens(r) for r in reqs] == [tiny_engine.count_tokens(r) for r in reqs]
    got, want = engine.generate(reqs), tiny_engine.generate(reqs)
    assert [(r.text, r.finish_reason) for r in got] == [(r.text, r.finish_reason) for r in want]
    assert "".join(c.text for c in engine.stream(reqs[1])) == got[1].text
    engine.close()
