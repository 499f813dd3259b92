"""Load a causal LM and its tokenizer from an artifact on disk (HF folder or GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.errors import InvalidModelError
from slmops.models.artifacts import TOKENIZER_FILES


def load_causal_lm(path: Path, *, gguf_file: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``. For GGUF, ``path`` is the folder and ``gguf_file`` the name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if gguf_file is None and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise InvalidModelError(f"{path} has no tokenizer.", "Save the tokenizer into the model folder.")
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(
            f"Could not load the model at {path} ({type(exc).__name__}: {exc}).",
            "The files may be corrupt or incomplete; re-import or re-pull the model.",
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
