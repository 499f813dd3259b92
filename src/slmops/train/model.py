"""Load the base model for a method (full / LoRA / QLoRA) and save the trained result."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from slmops.errors import SlmopsError
from slmops.models.resolve import ResolvedModel
from slmops.train.config import FinetuneConfig

EMBEDDING_MODULES = ("embed_tokens", "lm_head")  # peft's EMBEDDING_LAYER_NAMES


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
    if config.method == "qlora":
        _release_file_mapping(model)
    if config.method == "full":
        if resolved.format == "gguf":
            _drop_gguf_quantizer(model)
    else:
        model = _add_lora(model, config)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if config.lora:
            model.enable_input_require_grads()
    return model


def load_teacher(teacher: ResolvedModel, base: ResolvedModel | None) -> Any:
    """A frozen teacher for logit KD, in eval mode (a PEFT adapter is merged into its ``base``)."""
    from slmops.models.loader import load_causal_lm, load_with_adapter

    if teacher.format == "peft-adapter":
        if base is None:
            raise SlmopsError(f"The teacher {teacher.label} is a PEFT adapter without a known base model.",
                              "Import it with its base (`slmops models import PATH --name NAME --base BASE`).")
        model, _ = load_with_adapter(teacher.path, base.load_dir, gguf_file=base.gguf_file)
    else:
        model, _ = load_causal_lm(teacher.load_dir, gguf_file=teacher.gguf_file)
    model.config.use_cache = False
    model.eval()
    model.requires_grad_(False)
    return model


PROBE = "Hello world! The answer is 42. café ünïcödé 世界 def f(x): return x"


def check_same_vocabulary(student: Any, teacher: Any, student_label: str, teacher_label: str) -> None:
    """Logit KD compares distributions token by token: both tokenizers must map the same text to
    the same ids (vocabulary size, special tokens and a probe sentence are compared)."""
    def view(tok: Any) -> tuple[Any, ...]:
        return len(tok), tok.eos_token_id, tok.bos_token_id, tuple(tok(PROBE, add_special_tokens=False)["input_ids"])

    s, t = view(student), view(teacher)
    if s == t:
        return
    what = (f"the teacher has {len(teacher)} tokens, the student {len(student)}" if s[0] != t[0] else
            "different special-token ids" if s[1:3] != t[1:3] else "different ids for the same text")
    raise SlmopsError(
        f"The teacher {teacher_label} and the student {student_label} do not share a tokenizer ({what}), "
        "so their logits cannot be compared for logit-level KD.",
        "Pick a teacher of the same model family (same tokenizer), or drop --teacher and distil through "
        "synthetic data only (`slmops distill generate`, then `slmops distill train`).",
    )


def _nf4_config() -> Any:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise SlmopsError(
            "--method qlora needs the bitsandbytes package, from the qlora extra.",
            "Install it: pip install 'slmops[qlora]'.",
        ) from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=False,
    )


def _release_file_mapping(model: Any) -> None:
    """bitsandbytes quantizes the weights as they are read from the memory-mapped safetensors
    file, but the tensors left in float32 (embeddings, norms) still point into that mapping,
    which keeps every page read for quantization resident: the whole float32 file (about
    550 MB for SmolLM2-135M, three times its 4-bit weights). Copying those few tensors out
    lets the mapping go."""
    from bitsandbytes.nn import Params4bit

    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, Params4bit):
                p.data = p.data.clone()
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.clone()


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
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in favour of another
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
        config = model.peft_config["default"]
        config.base_model_name_or_path = base_ref
        # say whether the embeddings were trained (peft would otherwise look for the base's config.json at
        # base_ref, a store reference, and warn that it cannot find one); training never resizes them
        targets = config.target_modules
        embeddings = "auto" if isinstance(targets, str) else any(t in EMBEDDING_MODULES for t in targets or ())
        model.save_pretrained(folder, save_embedding_layers=embeddings)
        (folder / "README.md").unlink(missing_ok=True)
    tokenizer.save_pretrained(folder)
