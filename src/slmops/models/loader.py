"""Load a causal LM and its tokenizer from an artifact on disk (HF folder, GGUF, or a PEFT
adapter on top of either)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

from slmops.errors import InvalidModelError
from slmops.models.artifacts import TOKENIZER_FILES

# transformers builds models inside context managers that monkeypatch process-wide state
# (``no_init_weights`` swaps ``PreTrainedModel.init_weights`` and torch's init functions,
# ``no_tie_weights`` swaps ``tie_weights``) and restore it on exit. Two threads building at
# once interleave the swaps and can leave the patched versions in place for good: every
# later model then has uninitialised weights (NaN logits) or untied meta-device heads. Every
# model construction in slmops (a server loading a version beside the one it serves, a
# fleet agent warming a new version) holds this lock.
MODEL_INIT_LOCK = threading.RLock()


def load_causal_lm(
    path: Path, *, gguf_file: str | None = None, dtype: str = "float32", quantization_config: Any = None
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``. For GGUF, ``path`` is the folder and ``gguf_file`` the name;
    ``quantization_config`` (e.g. bitsandbytes nf4) loads the weights quantized."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    quant = {"quantization_config": quantization_config} if quantization_config is not None else {}
    tokenizer = load_tokenizer(path, gguf_file=gguf_file)
    try:
        with MODEL_INIT_LOCK:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs, **quant)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(
            f"Could not load the model at {path} ({type(exc).__name__}: {exc}).",
            "The files may be corrupt or incomplete; re-import or re-pull the model.",
        ) from exc
    return model, tokenizer


def load_tokenizer(path: Path, *, gguf_file: str | None = None) -> Any:
    """The tokenizer alone (fast: data can be validated before the weights are loaded)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if gguf_file is None and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise InvalidModelError(f"{path} has no tokenizer.", "Save the tokenizer into the model folder.")
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(
            f"Could not load the tokenizer at {path} ({type(exc).__name__}: {exc}).",
            "The files may be corrupt or incomplete; re-import or re-pull the model.",
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_with_adapter(
    adapter_dir: Path, base_dir: Path, *, gguf_file: str | None = None, merge: bool = True
) -> tuple[Any, Any]:
    """The base model with a PEFT adapter applied (merged into the weights for fast inference
    unless ``merge`` is False); the adapter's own tokenizer wins when it ships one."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base_dir, gguf_file=gguf_file)
    if any((adapter_dir / f).exists() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(adapter_dir)
    try:
        with warnings.catch_warnings():  # peft's deprecation chatter is not the user's business
            warnings.simplefilter("ignore")
            with MODEL_INIT_LOCK:
                model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(
            f"Could not apply the adapter at {adapter_dir} to its base at {base_dir} ({type(exc).__name__}: {exc}).",
            "The adapter may be corrupt, or trained on a different base; re-train or re-import it.",
        ) from exc
    return (model.merge_and_unload() if merge else model), tokenizer


def load_with_adapters(adapters: dict[str, Path], base_dir: Path, *, gguf_file: str | None = None) -> tuple[Any, Any]:
    """One base model holding several PEFT adapters side by side, unmerged, under the given
    names (PEFT adapter names: no '.'); a forward with ``adapter_names=[...]`` picks one per
    row (``"__base__"`` for none). The adapters must share one tokenizer (vocabulary and chat
    template); the first adapter's own tokenizer wins when it ships one, as in
    :func:`load_with_adapter`."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base_dir, gguf_file=gguf_file)
    shipped = [(n, load_tokenizer(d)) for n, d in adapters.items() if any((d / f).exists() for f in TOKENIZER_FILES)]
    if shipped:
        tokenizer = shipped[0][1]
    for name, tok in shipped:
        if (len(tok), tok.chat_template) != (len(tokenizer), tokenizer.chat_template):
            raise InvalidModelError(
                f"The adapters do not share one tokenizer: {name!r} differs from {shipped[0][0]!r}.",
                "Serve adapters trained with different tokenizers or chat templates from separate engines.",
            )
    first, *rest = adapters.items()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with MODEL_INIT_LOCK:
                model = PeftModel.from_pretrained(model, str(first[1]), adapter_name=first[0])
            for name, folder in rest:
                model.load_adapter(str(folder), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(
            f"Could not load the adapters {', '.join(map(str, adapters.values()))} onto their base at {base_dir} "
            f"({type(exc).__name__}: {exc}).",
            "An adapter may be corrupt, or trained on a different base; re-train or re-import it.",
        ) from exc
    return model.eval(), tokenizer
