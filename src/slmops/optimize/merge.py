"""Merge a PEFT adapter into its base model: a new full Hugging Face folder."""

from __future__ import annotations

from pathlib import Path


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path, *, base_gguf: str | None = None) -> int:
    """Write base + adapter (LoRA deltas folded into the weights) to ``out_dir`` as float32
    safetensors with the tokenizer, chat template and generation config; returns the
    parameter count."""
    from slmops.models.loader import load_with_adapter

    model, tokenizer = load_with_adapter(adapter_dir, base_dir, gguf_file=base_gguf, merge=True)
    if hasattr(model.config, "quantization_config"):  # a GGUF base was read through a quantizer
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())
