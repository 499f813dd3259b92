"""Build an ONNX Runtime GenAI model folder with onnxruntime-genai's model builder.

The builder runs in this process (it is a library function; a subprocess would pay for the
torch import again) with its chatter captured, so ``--json`` output stays clean; its log is
shown only when it fails. Afterwards the folder's ``genai_config.json`` gets the model's real
end-of-turn ids: a builder-made config can carry only ``config.json``'s ``eos_token_id``, and
a chat model whose turn ends with another token (SmolLM2's ``<|im_end|>`` when the config
names ``<|endoftext|>``) then generates on until ``max_tokens``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError

ONNX_PRECISIONS = ("fp32", "fp16", "int8", "int4")
ONNX_DEVICES = ("cpu", "cuda")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# the builder's weight-only methods (k_quant_mixed keeps lm_head and the most sensitive layers at
# int8; *_last keep lm_head at int8) and hqq (our two-step build, slmops.optimize.onnx_hqq)
ALGORITHMS = ("hqq", "default", "rtn", "rtn_last", "k_quant", "k_quant_last", "k_quant_mixed")
INT4_ONLY = ("hqq",)


def default_algorithm(precision: str) -> str:
    """k_quant_mixed for int4, the builder's default otherwise. hqq is near-lossless on the
    built-in SmolLM2 (+0.5% perplexity vs +16.7%: its weights are a dequantized Q4_1 GGUF, which
    HQQ's float block offsets reproduce) but far worse on genuinely float weights: a pruned,
    fine-tuned 10-layer student lost all its task accuracy with hqq (0.97 -> 0.00) and kept it
    with k_quant_mixed (bench/RESULTS.md, quantize_quality)."""
    return "k_quant_mixed" if precision == "int4" else "default"


END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>")


def check_onnx_options(
    precision: str, device: str, block_size: int, accuracy_level: int | None, algorithm: str | None = None
) -> list[str]:
    """Every problem with the options at once (empty when they are fine)."""
    problems = []
    if algorithm is not None and algorithm not in ALGORITHMS:
        problems.append(f"--algorithm must be one of {', '.join(ALGORITHMS)} (got {algorithm!r})")
    if algorithm in INT4_ONLY and precision != "int4":
        problems.append(f"--algorithm {algorithm} is an int4 method (got --precision {precision})")
    if precision not in ONNX_PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(ONNX_PRECISIONS)} (got {precision!r})")
    if device not in ONNX_DEVICES:
        problems.append(f"--device must be one of {', '.join(ONNX_DEVICES)} (got {device!r})")
    if precision == "fp16" and device == "cpu":
        problems.append("fp16 ONNX models are built for GPUs: pass --device cuda, or use fp32/int8/int4 on CPU")
    if block_size not in BLOCK_SIZES:
        problems.append(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))} (got {block_size})")
    if accuracy_level is not None and accuracy_level not in (0, 1, 2, 3, 4):
        problems.append(f"--accuracy-level must be 0-4 (got {accuracy_level})")
    return problems


def builder_options(
    precision: str, block_size: int, symmetric: bool, accuracy_level: int | None, algorithm: str | None = None
) -> list[str]:
    """The builder's KEY=VALUE extra options for our flags (quantization keys only when quantizing)."""
    if precision not in ("int4", "int8"):
        return []
    opts = [f"block_size={block_size}", f"is_symmetric={'true' if symmetric else 'false'}"]
    if not symmetric:  # the builder's asymmetric tied embeddings fail to load (uint8 Reshape); keep them apart
        opts.append("shared_embeddings=false")
    if accuracy_level is not None:
        opts.append(f"accuracy_level={accuracy_level}")
    algorithm = algorithm or default_algorithm(precision)
    if algorithm not in ("default", *INT4_ONLY):
        opts.append(f"algo_config={algorithm}")
    return opts


def build_onnx(
    hf_dir: Path,
    out_dir: Path,
    *,
    precision: str = "int4",
    device: str = "cpu",
    block_size: int = 32,
    symmetric: bool = True,
    accuracy_level: int | None = None,
    algorithm: str | None = None,
    cache_dir: Path | None = None,
    adapter: Path | None = None,
) -> dict[str, Any]:
    """Build ``out_dir`` from the Hugging Face folder ``hf_dir``; returns the builder options used.
    With ``adapter`` (a PEFT LoRA folder) the graph gets its LoRA paths, unquantized, beside the
    base weights (see :mod:`slmops.optimize.onnx_adapters`)."""
    try:
        from onnxruntime_genai.models import builder
    except ImportError as exc:
        raise SlmopsError(
            f"ONNX export needs onnxruntime-genai and its model builder ({exc}).",
            "Install them: pip install onnxruntime-genai onnx onnx-ir",
        ) from exc
    extra = builder_options(precision, block_size, symmetric, accuracy_level, algorithm)
    hf_config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    layers = int(hf_config.get("num_hidden_layers") or hf_config.get("text_config", {}).get("num_hidden_layers", 0))
    hqq = precision == "int4" and (algorithm or default_algorithm(precision)) == "hqq"
    excluded: list[str] = []
    if hqq:  # the builder quantizes only the embedding; every MatMul is left for HQQ
        from slmops.optimize.onnx_hqq import builder_exclusions

        excluded += builder_exclusions(layers)
    if adapter is not None:
        from slmops.optimize.onnx_adapters import lora_nodes, target_modules

        extra.append(f"adapter_path={adapter}")
        if precision in ("int4", "int8"):
            excluded += lora_nodes(layers, target_modules(adapter))
    if excluded:
        extra.append("nodes_to_exclude=" + ",".join(excluded))
    cache = cache_dir or out_dir.parent / f"{out_dir.name}-cache"
    log = io.StringIO()
    logging.disable(logging.ERROR)  # onnxruntime's quantizer logs every node at INFO on its own handler
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            opts = builder.parse_extra_options(None, str(hf_dir), str(out_dir), precision, device, str(cache), extra)
            builder.create_model(None, str(hf_dir), str(out_dir), precision, device, str(cache), **opts)
    except Exception as exc:  # the builder raises bare Exceptions/NotImplementedError for unsupported models
        tail = " | ".join(log.getvalue().strip().splitlines()[-3:])
        raise SlmopsError(
            f"The ONNX model builder could not convert {hf_dir} ({type(exc).__name__}: {exc}). {tail}".strip(),
            "Check that onnxruntime-genai supports this architecture, or export to GGUF with --to gguf.",
        ) from exc
    finally:
        logging.disable(logging.NOTSET)
    report: dict[str, Any] = {"builder_extra_options": [o for o in extra if not o.startswith("nodes_to_exclude=")]}
    if hqq:
        from slmops.optimize.onnx_hqq import hqq_quantize

        level = accuracy_level if accuracy_level is not None else (4 if device == "cpu" else 0)
        tied = bool(hf_config.get("tie_word_embeddings", hf_config.get("text_config", {}).get("tie_word_embeddings")))
        report["hqq"] = hqq_quantize(out_dir, block_size=block_size, accuracy_level=level, tied=tied)
    fixed = fix_eos_ids(out_dir, hf_dir)
    return {**report, "eos_token_id": fixed}


def end_of_turn_ids(hf_dir: Path) -> list[int]:
    """The ids that end a turn: generation_config's ``eos_token_id``, the tokenizer's EOS, and
    the chat template's end-of-turn token when the template uses one."""
    from slmops.models.loader import load_tokenizer

    tok = load_tokenizer(hf_dir)
    ids: list[int] = []
    gen_path = hf_dir / "generation_config.json"
    if gen_path.exists():
        eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    vocab = tok.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in template and t in vocab)
    return sorted(set(ids))


def fix_eos_ids(onnx_dir: Path, hf_dir: Path) -> list[int]:
    """Write the end-of-turn ids into ``genai_config.json`` (and a pad id that exists)."""
    path = onnx_dir / "genai_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    ids = end_of_turn_ids(hf_dir)
    if ids:
        cfg["model"]["eos_token_id"] = ids if len(ids) > 1 else ids[0]
        if cfg["model"].get("pad_token_id") is None:
            cfg["model"]["pad_token_id"] = ids[0]
    path.write_text(json.dumps(cfg, indent=4) + "\n", encoding="utf-8")
    return ids
