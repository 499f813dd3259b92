"""What a :class:`~slmops.engines.batching.DecodeBatch` needs from the engine it decodes for:
a PyTorch causal LM, its tokenizer and special ids, and the engine's prompt and adapter rules.
:class:`~slmops.engines.torch_engine.TorchEngine` is one; the batch depends on this protocol,
not on the engine module (which imports the batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from slmops.engines.base import GenerationRequest


class Decoder(Protocol):
    model: Any  # a transformers causal LM (optionally a PEFT model with several adapters)
    tokenizer: Any
    eos_ids: set[int]
    pad_id: int
    context_length: int

    def check_adapter(self, adapter: str | None) -> None: ...

    def prompt_ids(self, request: GenerationRequest) -> list[int]: ...

    def forward_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]: ...


class GraphDecoder(Protocol):
    """What an :class:`~slmops.engines.ort_batching.OrtDecodeBatch` needs from the ONNX engine
    (:class:`~slmops.engines.ortgenai_engine.OrtGenAIEngine` is one), so the batch module does
    not import the engine module that imports it."""

    tokenizer: Any
    eos_ids: set[int]
    context_length: int
    max_batch_size: int

    def prompt_ids(self, request: GenerationRequest) -> list[int]: ...

    def _adapter(self, request: GenerationRequest) -> str | None: ...
