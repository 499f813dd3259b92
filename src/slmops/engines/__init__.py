"""Inference engines behind one interface. :func:`open_engine` picks one for a reference."""

from __future__ import annotations

import os
from pathlib import Path

from slmops.engines.adapters import open_engine_with_adapters, parse_multi_ref
from slmops.engines.base import (
    Engine,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    Message,
    StreamChunk,
)
from slmops.engines.grammar import json_schema_grammar, with_json_schema
from slmops.errors import EngineError
from slmops.models.pull import Progress
from slmops.models.store import ModelStore

__all__ = [
    "Engine",
    "GenerationParams",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "StreamChunk",
    "json_schema_grammar",
    "open_engine",
    "open_engine_with_adapters",
    "with_json_schema",
]


def open_engine(
    ref: str,
    store: ModelStore | None = None,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Engine:
    """Open an engine for a store reference, a path, or an OpenAI-compatible URL.

    A URL takes the served model name after ``#``: ``http://127.0.0.1:8000/v1#my-model``.
    A built-in model that is not pulled yet is pulled first. ``BASE+ADAPTER1,ADAPTER2`` opens the
    base once with several PEFT adapters; each request picks one (``GenerationRequest.adapter``).
    """
    if ref.startswith(("http://", "https://")):
        from slmops.engines.remote import RemoteEngine

        url, _, model = ref.partition("#")
        return RemoteEngine(url, model or "default")
    multi = parse_multi_ref(ref) if not Path(ref).expanduser().exists() else None
    if multi is not None:
        return open_engine_with_adapters(multi[0], multi[1], store, threads=threads, progress=progress)
    from slmops.models.resolve import resolve

    store = store or ModelStore()
    resolved = resolve(ref, store, progress=progress)
    if resolved.format == "peft-adapter":
        return _open_adapter(resolved, store, threads=threads, progress=progress)
    if resolved.format == "onnx-genai":
        from slmops.engines.ortgenai_engine import OrtGenAIEngine

        return OrtGenAIEngine(resolved.path, threads=threads)
    if resolved.format == "gguf" and os.environ.get("SLMOPS_GGUF_ENGINE") == "llamacpp":
        from slmops.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(resolved.load_dir / str(resolved.gguf_file), threads=threads)
    if resolved.format in ("hf", "gguf"):
        from slmops.engines.torch_engine import TorchEngine

        return TorchEngine.from_path(resolved.load_dir, gguf_file=resolved.gguf_file, threads=threads)
    raise EngineError(
        f"{resolved.label} is a {resolved.format} artifact, which this version of slmops cannot run yet.",
        "Run its base model, or a Hugging Face or GGUF model.",
    )


def _open_adapter(resolved, store: ModelStore, *, threads: int | None, progress: Progress | None) -> Engine:
    """A PEFT adapter from the store runs on its base (the record's first parent)."""
    from slmops.engines.torch_engine import TorchEngine
    from slmops.models.loader import load_with_adapter
    from slmops.models.resolve import resolve

    base_ref = resolved.record.base if resolved.record is not None else None
    if base_ref is None:
        raise EngineError(
            f"{resolved.label} is a PEFT adapter without a known base model.",
            "Import it into the store with its base: `slmops models import PATH --name NAME --base BASE`.",
        )
    base = resolve(base_ref, store, progress=progress)
    if base.format not in ("hf", "gguf"):
        raise EngineError(f"The base of {resolved.label} ({base.label}) is a {base.format} artifact, not a model.")
    model, tokenizer = load_with_adapter(resolved.path, base.load_dir, gguf_file=base.gguf_file)
    return TorchEngine(model, tokenizer, threads=threads)
