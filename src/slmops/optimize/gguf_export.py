"""Write a Hugging Face llama-architecture folder as one GGUF file with the ``gguf`` package.

Names, metadata and layout follow llama.cpp's ``convert_hf_to_gguf.py``: the llama q/k
permutation, norms kept in float32, a GPT-2 style BPE vocabulary with merges, token types,
special token ids and the chat template. Weight matrices are stored as F16, Q8_0, Q4_0 or
Q4_1 (quantized by ``gguf.quants``); a matrix whose rows do not split into whole blocks
falls back to F16, as llama.cpp does. For the 4-bit types the output projection (the token
embedding when the two are tied) stays Q8_0, like llama-quantize keeps it at higher precision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import SlmopsError

GGUF_QUANTS = ("f16", "q8_0", "q4_0", "q4_1")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)


def _types(quant: str) -> tuple[Any, Any]:
    """(GGML tensor type, llama file type) for a ``--quant`` name."""
    import gguf

    table = {
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
        "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
        "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    }
    if quant not in table:
        raise SlmopsError(f"Unknown GGUF quantization {quant!r}.", f"Use one of: {', '.join(GGUF_QUANTS)}.")
    return table[quant]


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout: HF stores each head's rotary halves apart, GGML interleaves them."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def read_config(hf_dir: Path) -> dict[str, Any]:
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in LLAMA_ARCHITECTURES:
        raise SlmopsError(
            f"GGUF export supports llama-architecture models; {hf_dir} is {arch}.",
            "Convert it with `--to onnx` instead.",
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise SlmopsError(f"GGUF export does not support rope scaling {rope.get('rope_type')!r} yet ({hf_dir}).")
    return cfg


def hf_tensors(hf_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the folder's safetensors files as float32 numpy (bf16/f16 upcast)."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise SlmopsError(f"{hf_dir} has no *.safetensors weights to convert.", "Save the model with safetensors.")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, st.get_tensor(name).float().numpy()


def _tensor_type(name: str, data: np.ndarray, qtype: Any, tied: bool) -> Any:
    import gguf

    if data.ndim < 2 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    keep_high = name == "output.weight" or (tied and name == "token_embd.weight")
    if keep_high and qtype in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
        qtype = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def _encode(data: np.ndarray, ttype: Any) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    if ttype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if ttype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return quantize(data.astype(np.float32), ttype)


def add_tokenizer(writer: Any, hf_dir: Path, vocab_size: int) -> None:
    """GPT-2 style BPE vocabulary: tokens, token types, merges, special ids, chat template."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    if not getattr(tok, "is_fast", False):
        raise SlmopsError(f"GGUF export needs a fast BPE tokenizer (tokenizer.json) in {hf_dir}.")
    tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tj.get("model", {}).get("type") != "BPE":
        raise SlmopsError(f"GGUF export supports byte-level BPE tokenizers; {hf_dir} has another kind.")
    reverse = {i: t for t, i in tok.get_vocab().items()}
    decoders = tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in decoders:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if decoders[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tj.get("pre_tokenizer") or {}))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens))
    if special.chat_template is None and tok.chat_template:
        special.chat_template = tok.chat_template
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer(pre: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer: SmolLM's digit split + byte level, else GPT-2's."""
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"
    return "gpt-2"


def write_gguf(hf_dir: Path, out_file: Path, quant: str = "q8_0", *, name: str | None = None) -> dict[str, Any]:
    """Convert ``hf_dir`` to ``out_file``; returns a summary (tensor count, types used)."""
    import gguf

    qtype, ftype = _types(quant)
    cfg = read_config(hf_dir)
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    n_layer, hidden = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    tied = bool(cfg.get("tie_word_embeddings", False))
    rope = cfg.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name(name or hf_dir.name)
    writer.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-5))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, hf_dir, int(cfg["vocab_size"]))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    used: dict[str, int] = {}
    for hf_name, data in hf_tensors(hf_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SlmopsError(f"Cannot map tensor {hf_name!r} of {hf_dir} to a GGUF llama tensor.")
        if new.endswith("attn_q.weight"):
            data = permute_qk(data, n_head)
        elif new.endswith("attn_k.weight"):
            data = permute_qk(data, n_kv)
        ttype = _tensor_type(new, data, qtype, tied)
        writer.add_tensor(new, _encode(data, ttype), raw_dtype=ttype)
        used[ttype.name] = used.get(ttype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": sum(used.values()), "tensor_types": used, "quant": quant}
