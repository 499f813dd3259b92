"""The PyTorch engine: batched generation with left padding and a KV cache.

One step-level decode loop (:class:`~slmops.engines.batching.DecodeBatch`) serves
``generate``, ``stream`` and the server's continuous batching: each step runs one forward
pass for every row still generating, samples one token per row with that row's own RNG (so a
seeded request gives the same text alone or in a batch), and drops finished rows from the
batch and the cache; new rows may join between steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slmops.engines.base import Engine, GenerationRequest, GenerationResult, StreamChunk, TokenLogprob
from slmops.engines.batching import BatchEvent, DecodeBatch
from slmops.engines.prefix_cache import PrefixCache
from slmops.errors import EngineError


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        threads: int | None = None,
        max_batch_size: int = 32,
        adapters: Mapping[str, str] | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        self.adapters = dict(adapters or {})  # request adapter name -> PEFT adapter name in ``model``
        self.prefix_cache: PrefixCache | None = PrefixCache()  # KV of prompt prefixes (see prefix_cache)

    @classmethod
    def from_path(cls, path: Path, *, gguf_file: str | None = None, threads: int | None = None) -> TorchEngine:
        from slmops.models.loader import load_causal_lm

        model, tokenizer = load_causal_lm(path, gguf_file=gguf_file)
        return cls(model, tokenizer, threads=threads)

    # -- prompts ---------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if request.messages is None:
            ids = list(tok(request.prompt, add_special_tokens=True)["input_ids"])
            if not ids and tok.bos_token_id is not None:
                ids = [tok.bos_token_id]  # an empty prompt starts from BOS (a base model's unconditional text)
            return ids
        if not tok.chat_template:
            raise EngineError(
                "This model has no chat template, so chat messages cannot be formatted.",
                "Send a raw prompt instead (e.g. `slmops generate --raw`), or use an instruction-tuned model.",
            )
        messages = [m.as_dict() for m in request.messages]
        tools = json.loads(request.tools) if request.tools else None
        extra: dict[str, Any] = {}
        if tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
            from slmops.engines.tools import render_default, template_has_tools

            if template_has_tools(tok.chat_template):
                extra["tools"] = [{"type": "function", "function": f} for f in tools or ()]
            else:
                messages = render_default(messages, tools)
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    # -- adapters (one base, several PEFT adapters, one per request) --------------------------
    def check_adapter(self, adapter: str | None) -> None:
        if adapter is None or adapter in self.adapters:
            return
        if not self.adapters:
            raise EngineError(
                f"Adapter {adapter!r} was asked for, but this model was opened without adapters.",
                "Open the base with its adapters, e.g. `open_engine('BASE+ADAPTER1,ADAPTER2')`.",
            )
        raise EngineError(
            f"Unknown adapter {adapter!r}.", f"This engine holds: {', '.join(sorted(self.adapters))} (or none)."
        )

    def forward_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        """Extra model-forward arguments for rows asking for these adapters (in batch order):
        PEFT's per-row ``adapter_names`` (``__base__`` = no adapter); nothing for a plain model."""
        if not self.adapters:
            return {}
        return {"adapter_names": [self.adapters[a] if a else "__base__" for a in adapters]}

    # -- public API ------------------------------------------------------------------------
    def new_batch(self) -> DecodeBatch:
        """A step-level batch that requests can join and leave between steps (continuous batching)."""
        return DecodeBatch(self)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return _generate_batched(self, requests)

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        return _stream_batched(self, request)


def _generate_batched(engine: Any, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """``generate`` over an engine's step-level batch (``engine.new_batch()``), in chunks of
    ``engine.max_batch_size``; results in request order."""
    results: list[GenerationResult] = []
    for start in range(0, len(requests), engine.max_batch_size):
        chunk = requests[start : start + engine.max_batch_size]
        t0 = time.perf_counter()
        batch = engine.new_batch()
        ids = [batch.add(r) for r in chunk]
        pieces: dict[int, list[str]] = {i: [] for i in ids}
        lps: dict[int, list[TokenLogprob]] = {i: [] for i in ids}
        finals: dict[int, tuple[BatchEvent, float]] = {}
        while batch:
            for ev in batch.step():
                pieces[ev.id].append(ev.text)
                lps[ev.id].extend(ev.logprobs)
                if ev.finish_reason is not None:
                    finals[ev.id] = (ev, time.perf_counter())
        for i, request in zip(ids, chunk, strict=True):
            ev, finished_at = finals[i]
            results.append(
                GenerationResult(
                    text="".join(pieces[i]),
                    prompt_tokens=ev.prompt_tokens,
                    completion_tokens=ev.completion_tokens,
                    finish_reason=ev.finish_reason or "length",
                    seconds=finished_at - t0,
                    logprobs=tuple(lps[i]) if request.params.logprobs is not None else None,
                )
            )
    return results


def _stream_batched(engine: Any, request: GenerationRequest) -> Iterator[StreamChunk]:
    batch = engine.new_batch()
    batch.add(request)
    while batch:
        for ev in batch.step():
            if ev.text or ev.logprobs:
                yield StreamChunk(ev.text, logprobs=ev.logprobs)
            if ev.finish_reason is not None:
                yield StreamChunk(
                    "",
                    finish_reason=ev.finish_reason,
                    prompt_tokens=ev.prompt_tokens,
                    completion_tokens=ev.completion_tokens,
                )
