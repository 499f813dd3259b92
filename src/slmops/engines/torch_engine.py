"""The PyTorch engine: batched generation with left padding and a KV cache.

One decode loop serves ``generate`` and ``stream``: each step runs one forward pass for
every row still generating, samples one token per row with that row's own RNG (so a seeded
request gives the same text alone or in a batch), and drops finished rows from the batch and
the cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmops.engines.base import (
    Engine,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from slmops.engines.text import IncrementalDecoder, StopMatcher
from slmops.errors import EngineError


@dataclass
class _Row:
    index: int
    prompt_len: int
    params: GenerationParams
    max_new: int
    decoder: IncrementalDecoder
    stops: StopMatcher
    generator: torch.Generator
    finish: FinishReason | None = None
    pieces: list[str] = field(default_factory=list)
    completion_tokens: int = 0  # counts the end-of-turn token too, as OpenAI servers do
    finished_at: float = 0.0


@dataclass(frozen=True)
class _Event:
    index: int
    text: str
    row: _Row


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, *, threads: int | None = None, max_batch_size: int = 32) -> None:
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

    @classmethod
    def from_path(cls, path: Path, *, gguf_file: str | None = None, threads: int | None = None) -> TorchEngine:
        from slmops.models.loader import load_causal_lm

        model, tokenizer = load_causal_lm(path, gguf_file=gguf_file)
        return cls(model, tokenizer, threads=threads)

    # -- prompts ---------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if request.messages is None:
            return list(tok(request.prompt, add_special_tokens=True)["input_ids"])
        if not tok.chat_template:
            raise EngineError(
                "This model has no chat template, so chat messages cannot be formatted.",
                "Send a raw prompt instead (e.g. `slmops generate --raw`), or use an instruction-tuned model.",
            )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    # -- public API ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = requests[start : start + self.max_batch_size]
            t0 = time.perf_counter()
            rows: dict[int, _Row] = {}
            for ev in self._decode(chunk):
                rows[ev.index] = ev.row
            for i in range(len(chunk)):
                row = rows[i]
                results.append(
                    GenerationResult(
                        text="".join(row.pieces),
                        prompt_tokens=row.prompt_len,
                        completion_tokens=row.completion_tokens,
                        finish_reason=row.finish or "length",
                        seconds=row.finished_at - t0,
                    )
                )
        return results

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        for ev in self._decode([request]):
            if ev.text:
                yield StreamChunk(ev.text)
            if ev.row.finish is not None:
                yield StreamChunk(
                    "",
                    finish_reason=ev.row.finish,
                    prompt_tokens=ev.row.prompt_len,
                    completion_tokens=ev.row.completion_tokens,
                )

    # -- the decode loop ---------------------------------------------------------------------
    def _new_row(self, index: int, prompt: list[int], params: GenerationParams) -> _Row:
        room = self.context_length - len(prompt)
        if room < 1:
            raise EngineError(
                f"The prompt has {len(prompt)} tokens but the model's context window is {self.context_length}.",
                "Shorten the prompt.",
            )
        gen = torch.Generator().manual_seed(params.seed if params.seed is not None else torch.seed())
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return _Row(
            index,
            len(prompt),
            params,
            min(params.max_tokens, room),
            IncrementalDecoder(decode),
            StopMatcher(params.stop),
            gen,
        )

    @torch.inference_mode()
    def _decode(self, requests: Sequence[GenerationRequest]) -> Iterator[_Event]:
        prompts = [self.prompt_ids(r) for r in requests]
        rows = [self._new_row(i, p, r.params) for i, (p, r) in enumerate(zip(prompts, requests, strict=True))]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1, :]
        active = list(range(len(rows)))  # row indices, in cache order
        last_pos = positions[:, -1]
        while True:
            next_tokens = self._sample(logits, [rows[i] for i in active])
            keep: list[int] = []
            for slot, i in enumerate(active):
                row = rows[i]
                text = self._advance(row, int(next_tokens[slot]))
                row.pieces.append(text)
                yield _Event(i, text, row)
                if row.finish is None:
                    keep.append(slot)
                else:
                    row.finished_at = time.perf_counter()
            if not keep:
                return
            if len(keep) < len(active):
                idx = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(idx)
                mask, last_pos, next_tokens = mask[idx], last_pos[idx], next_tokens[idx]
                active = [active[s] for s in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                cache=cache,
                use_cache=True,
            )
            cache, logits = out.cache, out.logits[:, -1, :]

    def _advance(self, row: _Row, token: int) -> str:
        """Feed one sampled token to a row; returns the text it may emit now."""
        row.completion_tokens += 1
        if token in self.eos_ids:
            row.finish = "stop"
            return row.stops.flush()
        text = row.stops.feed(row.decoder.push(token))
        if row.stops.stopped:
            row.finish = "stop"
        elif row.completion_tokens >= row.max_new:
            row.finish = "length"
            text += row.stops.flush()
        return text

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        logits = logits.float()
        out = logits.argmax(dim=-1)
        for slot, row in enumerate(rows):
            p = row.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[slot] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                cum = sorted_p.cumsum(0)
                sorted_p[(cum - sorted_p) > p.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            out[slot] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return out
