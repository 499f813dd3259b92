"""Load the base model for a method (full / LoRA / QLoRA) and save the trained result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slmops.errors import SlmopsError
from slmops.models.resolve import ResolvedModel
from slmops.train.config import FinetuneConfig


def load_tokenizer(resolved: ResolvedModel) -> Any:
    from slmops.models.loader import load_tokenizer as load

    return load(resolved.load_dir, gguf_file=resolved.gguf_file)


def load_for_training(resolved: ResolvedModel, config: FinetuneConfig) -> Any:
    """The model ready to train: all weights trainable (full), or a frozen base with LoRA
    adapters (lora), or a frozen 4-bit nf4 base with LoRA adapters (qlora)."""
    from slmops.models.loader import load_causal_lm

    quant = _nf4_config() if config.method == "qlora" else None
    model, _ = load_causal_lm(resolved.load_dir, gguf_file=resolved.gguf_file, quantization_config=quant)
    model.config.use_cache = False
    if config.method == "full":
        if resolved.format == "gguf":
            _drop_gguf_quantizer(model)
    else:
        model = _add_lora(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora:
            model.enable_input_require_grads()
    return model


def _nf4_config() -> Any:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise SlmopsError(
            "--method qlora needs the bitsandbytes package.", "Install it: pip install bitsandbytes."
        ) from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=False,
    )


def _add_lora(model: Any, config: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = "all-linear" if config.target_modules == ["all-linear"] else config.target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # e.g. target modules not found in the model
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise SlmopsError(
            f"Cannot add LoRA adapters: {exc}", f"Linear modules in this model: {', '.join(names)}."
        ) from exc


def _drop_gguf_quantizer(model: Any) -> None:
    """A GGUF-loaded model is plain float32 now; its quantizer only described how it was read."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def weight_bytes(model: Any) -> int:
    """Bytes held by parameters and buffers (4-bit weights count at their packed size)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_result(model: Any, tokenizer: Any, folder: Path, *, method: str, base_ref: str | None) -> None:
    """A PEFT adapter folder (lora/qlora) or a full Hugging Face folder, with the tokenizer."""
    if method == "full":
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.peft_config["default"].base_model_name_or_path = base_ref
        model.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)
    tokenizer.save_pretrained(folder)
