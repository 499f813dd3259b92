"""Step-level decoding for continuous batching.

A :class:`DecodeBatch` holds the rows being generated, their KV cache and attention mask.
Requests join with :meth:`DecodeBatch.add` and leave when they finish or are cancelled; each
:meth:`DecodeBatch.step` is one step boundary:

1. rows cancelled since the last step leave the batch (and the cache);
2. one forward pass feeds every running row the token it sampled last step;
3. newcomers are prefilled together (left-padded) and their cache is left-pad-merged into
   the running cache, so rows of different lengths share one batch;
4. one token is sampled per row with that row's own RNG (a seeded request gives the same
   text alone or in a batch); finished rows leave.

Every row's real tokens stay right-aligned, so the mask is plain left padding throughout;
columns that are padding for every row are trimmed when rows leave. Caches whose layers are
not plain :class:`~transformers.cache_utils.DynamicLayer` (sliding windows) cannot be merged;
newcomers then wait until the batch drains.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from slmops.engines.base import FinishReason, GenerationParams, GenerationRequest, TokenLogprob
from slmops.engines.grammar import RowConstraint, mask_torch, row_constraint
from slmops.engines.text import IncrementalDecoder, StopMatcher
from slmops.errors import EngineError

if TYPE_CHECKING:
    from slmops.engines.base import Engine, StreamChunk
    from slmops.engines.decoder import Decoder


@dataclass(frozen=True)
class BatchEvent:
    """Text a row may emit after one step; the row's last event carries ``finish_reason``
    and its token counts (``completion_tokens`` counts the end-of-turn token, as OpenAI does)."""

    id: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # the token of this step, when the request asked


@dataclass
class _Row:
    id: int
    prompt: list[int]
    params: GenerationParams
    max_new: int
    decoder: IncrementalDecoder
    stops: StopMatcher
    generator: torch.Generator
    finish: FinishReason | None = None
    completion_tokens: int = 0
    last_token: int = -1
    adapter: str | None = None
    constraint: RowConstraint | None = None  # the row's grammar (structured output)

    def advance(self, token: int, eos_ids: set[int]) -> str:
        """Feed one sampled token; returns the text this row may emit now."""
        self.completion_tokens += 1
        self.last_token = token
        if token in eos_ids:
            self.finish = "stop"
            return self.stops.flush()
        if self.constraint is not None:
            self.constraint.consume(token)
        text = self.stops.feed(self.decoder.push(token))
        if self.stops.stopped or (self.constraint is not None and self.constraint.done):
            self.finish = "stop"
            text += self.stops.flush()
        elif self.completion_tokens >= self.max_new:
            self.finish = "length"
            text += self.stops.flush()
        return text

    def event(self, text: str, logprob: TokenLogprob | None = None) -> BatchEvent:
        lps = (logprob,) if logprob is not None else ()
        if self.finish is None:
            return BatchEvent(self.id, text, logprobs=lps)
        return BatchEvent(self.id, text, self.finish, len(self.prompt), self.completion_tokens, lps)


def sample(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """One token per row: greedy for temperature 0, else nucleus sampling with the row's RNG."""
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


def choose(logits: torch.Tensor, rows: list[_Row], eos_ids: set[int]) -> list[BatchEvent]:
    """One step's decision for every row (the shared tail of a decode step): mask each
    constrained row's logits to its grammar, sample, record log-probabilities (of the raw
    distribution) for rows that asked, and advance the rows."""
    wanted = [r.params.logprobs for r in rows]
    constrained = [(s, r.constraint) for s, r in enumerate(rows) if r.constraint is not None]
    raw = logits
    if constrained:
        logits = logits.float().contiguous()
        if logits.data_ptr() == raw.data_ptr() and any(w is not None for w in wanted):
            raw = raw.clone()  # logprobs report the model's own distribution, before the mask
        mask_torch(logits, constrained)
    chosen = sample(logits, rows).tolist()
    lps = token_logprobs(raw, chosen, wanted, eos_ids)
    return [row.event(row.advance(t, eos_ids), lp) for row, t, lp in zip(rows, chosen, lps, strict=True)]


def new_row(rid: int, request: GenerationRequest, engine: Any, prompt_ids: list[int] | None = None) -> _Row:
    """The batch row of ``request`` (``prompt_ids``, else the engine's tokens for it), for every
    batcher: raises :class:`EngineError` for a prompt that leaves no room in the context window;
    the row gets its own RNG and, when asked for, its grammar."""
    prompt = list(prompt_ids) if prompt_ids is not None else engine.prompt_ids(request)
    room = engine.context_length - len(prompt)
    if room < 1 or not prompt:
        raise EngineError(
            f"The prompt has {len(prompt)} tokens but the model's context window is {engine.context_length}.",
            "Shorten the prompt.",
        )
    params = request.params
    # unseeded rows draw from the OS, never torch.seed(), which would reseed the process-wide RNG
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
    tok = engine.tokenizer
    decoder = IncrementalDecoder(lambda ids: tok.decode(ids, skip_special_tokens=True))
    row = _Row(rid, prompt, params, min(params.max_tokens, room), decoder, StopMatcher(params.stop),
               torch.Generator().manual_seed(seed), adapter=request.adapter)
    attach_constraint(row, engine)
    return row


def attach_constraint(row: _Row, engine: Any) -> None:
    """Give a new row its grammar matcher when its request has one (engines with a HF tokenizer)."""
    if row.params.grammar is not None:
        vocab = getattr(engine, "vocab_size", None) or len(engine.tokenizer)
        row.constraint = row_constraint(engine, row.params.grammar, vocab)


def token_logprobs(
    logits: torch.Tensor, tokens: list[int], wanted: list[int | None], eos_ids: set[int]
) -> list[TokenLogprob | None]:
    """Each row's chosen-token log-probability (raw model distribution) and its top
    ``wanted[slot]`` alternatives; ``None`` for rows that did not ask, or that ended (EOS)."""
    out: list[TokenLogprob | None] = [None] * len(tokens)
    slots = [s for s, w in enumerate(wanted) if w is not None and tokens[s] not in eos_ids]
    if not slots:
        return out
    lp = torch.log_softmax(logits[slots].float(), dim=-1)
    for i, s in enumerate(slots):
        k = wanted[s] or 0
        top = lp[i].topk(k) if k else None
        alts = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
        out[s] = TokenLogprob(tokens[s], float(lp[i, tokens[s]]), alts)
    return out


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _concat_blocks(blocks: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cached blocks (per layer ``[heads, block, dim]``) as one ``[1, heads, tokens, dim]`` KV per layer."""
    return [
        (torch.cat([b[layer][0] for b in blocks], dim=1)[None], torch.cat([b[layer][1] for b in blocks], dim=1)[None])
        for layer in range(len(blocks[0]))
    ]


def _mergeable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class DecodeBatch:
    """A running batch of a :class:`TorchEngine` (any :class:`Decoder`); used from one thread at a time."""

    def __init__(self, engine: Decoder) -> None:
        self.engine = engine
        self._rows: list[_Row] = []  # in cache order
        self._pending: list[_Row] = []
        self._cancelled: set[int] = set()
        self._cache: Any = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._last_pos = torch.zeros((0,), dtype=torch.long)
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._rows) + len(self._pending)

    @property
    def running(self) -> int:
        return len(self._rows)

    def add(self, request: GenerationRequest, prompt_ids: list[int] | None = None) -> int:
        """Queue a request to join at the next step; returns its id. Raises :class:`EngineError`
        for a prompt that leaves no room in the context window."""
        self.engine.check_adapter(request.adapter)
        row = new_row(self._next_id, request, self.engine, prompt_ids)  # an id only for a row that joins
        self._next_id += 1
        self._pending.append(row)
        return row.id

    def cancel(self, rid: int) -> None:
        """The row leaves the batch at the next step boundary and emits nothing more."""
        self._cancelled.add(rid)

    @torch.inference_mode()
    def step(self) -> list[BatchEvent]:
        if self._cancelled:
            self._pending = [r for r in self._pending if r.id not in self._cancelled]
            self._keep([s for s, r in enumerate(self._rows) if r.id not in self._cancelled])
            self._cancelled.clear()
        logits = self._forward_running()
        if self._pending and (not self._rows or _mergeable(self._cache)):
            newcomers, self._pending = self._pending, []
            logits = torch.cat([logits, self._prefill(newcomers)]) if logits is not None else self._prefill(newcomers)
        if logits is None:
            return []
        events = choose(logits, self._rows, self.engine.eos_ids)
        self._keep([s for s, r in enumerate(self._rows) if r.finish is None])
        return events

    # -- internals ---------------------------------------------------------------------------
    def _forward_running(self) -> torch.Tensor | None:
        if not self._rows:
            return None
        n = len(self._rows)
        tokens = torch.tensor([[r.last_token] for r in self._rows], dtype=torch.long)
        self._mask = torch.cat([self._mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        self._last_pos = self._last_pos + 1
        out = self.engine.model(
            input_ids=tokens,
            attention_mask=self._mask,
            position_ids=self._last_pos[:, None],
            cache=self._cache,
            use_cache=True,
            **self.engine.forward_kwargs([r.adapter for r in self._rows]),
        )
        self._cache = out.cache
        return out.logits[:, -1, :]

    def _prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Prefill newcomers and add them to the running rows; returns their next-token logits.
        Rows whose prompt opens with cached blocks (the engine's prefix cache) prefill only the
        rest; newcomers that share a prefix prefill it once, then their rests together."""
        cache = getattr(self.engine, "prefix_cache", None)
        starts: dict[int, tuple[int, Any]] = {}  # row index -> (cached tokens, their KV per layer)
        if cache is not None:
            starts = self._cached_prefixes(cache, rows)
        cold = [i for i in range(len(rows)) if i not in starts]
        groups: dict[int, list[int]] = {}  # rows after the same prefix KV (one object) prefill together
        for i in sorted(starts):
            groups.setdefault(id(starts[i][1]), []).append(i)
        order = cold + [i for members in groups.values() for i in members]
        logits = []
        if cold:
            logits.append(self._prefill_cold([rows[i] for i in cold]))
        for members in groups.values():
            n, kv = starts[members[0]]
            logits.append(self._prefill_after([rows[i] for i in members], n, kv))
        if cache is not None:
            self._remember(cache, [rows[i] for i in order])
        return torch.cat(logits)

    def _prefill_cold(self, rows: list[_Row]) -> torch.Tensor:
        width = max(len(r.prompt) for r in rows)
        input_ids = torch.full((len(rows), width), self.engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt, dtype=torch.long)
            mask[i, width - len(r.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.engine.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,  # only the next token's: the LM head over every prompt position is ~20% of prefill
            **self.engine.forward_kwargs([r.adapter for r in rows]),
        )
        if not _mergeable(out.cache):
            self.engine.prefix_cache = None  # sliding-window caches: no prefix reuse
        self._join(out.cache, mask, positions[:, -1], rows)
        return out.logits[:, -1, :]

    def _prefill_after(self, rows: list[_Row], start: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Prefill every ``row.prompt[start:]`` after the same KV of their first ``start`` tokens,
        in one forward: the rests are left-padded after the prefix (the padding is masked, so a
        row's cache has a hole between its prefix and its rest, which the decode steps ignore)."""
        from transformers.cache_utils import DynamicCache

        rests = [r.prompt[start:] for r in rows]
        width = max(len(x) for x in rests)
        input_ids = torch.full((len(rows), width), self.engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), start + width), dtype=torch.long)
        mask[:, :start] = 1
        for i, rest in enumerate(rests):
            input_ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, start + width - len(rest) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        b = len(rows)
        past = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv] if b > 1 else kv
        out = self.engine.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=DynamicCache(ddp_cache_data=past),
            use_cache=True,
            logits_to_keep=1,
            **self.engine.forward_kwargs([r.adapter for r in rows]),
        )
        self._join(out.cache, mask, positions[:, -1], rows)
        return out.logits[:, -1, :]

    def _join(self, cache: Any, mask: torch.Tensor, last_pos: torch.Tensor, rows: list[_Row]) -> None:
        if self._rows:
            self._merge(cache, mask)
        else:
            self._cache, self._mask = cache, mask
        self._last_pos = torch.cat([self._last_pos, last_pos])
        self._rows.extend(rows)

    def _cached_prefixes(self, cache: Any, rows: list[_Row]) -> dict[int, tuple[int, Any]]:
        from slmops.engines.prefix_cache import shared_prefix_groups

        found: dict[int, tuple[int, Any]] = {}
        joined: dict[tuple[int, ...], Any] = {}  # rows that hit the same blocks share one KV (and a forward)
        for i, r in enumerate(rows):
            n, blocks = cache.lookup(r.prompt, r.adapter or "")
            if n:
                key = tuple(id(b) for b in blocks)
                if key not in joined:
                    joined[key] = _concat_blocks(blocks)
                found[i] = (n, joined[key])
        misses = [i for i in range(len(rows)) if i not in found]
        for adapter in dict.fromkeys(rows[i].adapter for i in misses):
            same = [i for i in misses if rows[i].adapter == adapter]
            # the exact shared length (not whole blocks): the rows' own blocks are cached afterwards
            for members, n in shared_prefix_groups([rows[i].prompt for i in same], cache.block, aligned=False):
                idx = [same[m] for m in members]
                out = self.engine.model(
                    input_ids=torch.tensor([rows[idx[0]].prompt[:n]], dtype=torch.long),
                    use_cache=True,
                    logits_to_keep=1,  # only its KV is used
                    **self.engine.forward_kwargs([adapter]),
                )
                kv = [(layer.keys, layer.values) for layer in out.cache.layers]
                for i in idx:
                    found[i] = (n, kv)
                cache.record_shared(len(idx) - 1, n)
        return found

    def _remember(self, cache: Any, rows: list[_Row]) -> None:
        """Put the newcomers' prompt blocks in the prefix cache (they are the last rows now)."""
        if self._cache is None or not _mergeable(self._cache):
            return
        for slot, row in zip(range(len(self._rows) - len(rows), len(self._rows)), rows, strict=True):
            # the row's real columns, in order (padding may sit on the left and after a shared prefix)
            cols = self._mask[slot].nonzero().flatten()[-len(row.prompt) :]

            def block(a: int, b: int, slot: int = slot, cols: torch.Tensor = cols) -> list[tuple[Any, Any]]:
                return [
                    (layer.keys[slot, :, cols[a:b]].clone(), layer.values[slot, :, cols[a:b]].clone())
                    for layer in self._cache.layers
                ]

            cache.insert(row.prompt, block, row.adapter or "")

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Left-pad the running cache or the newcomers' cache to a common length and stack them."""
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])

    def _keep(self, slots: list[int]) -> None:
        """Keep only these rows (in order); trim columns that are padding for every row left."""
        if len(slots) == len(self._rows):
            return
        self._rows = [self._rows[s] for s in slots]
        if not self._rows:
            self._cache, self._mask, self._last_pos = None, self._mask[:0, :0], self._last_pos[:0]
            return
        idx = torch.tensor(slots, dtype=torch.long)
        self._cache.batch_select_indices(idx)
        self._mask, self._last_pos = self._mask[idx], self._last_pos[idx]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0 and _mergeable(self._cache):
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._mask = self._mask[:, start:]


class StreamBatch:
    """The same step interface over any :class:`Engine` without one (remote, ONNX): each step
    takes one chunk from every request's stream in turn, so requests interleave."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._streams: dict[int, tuple[Iterator[StreamChunk], int]] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def running(self) -> int:
        return len(self._streams)

    def add(self, request: GenerationRequest, prompt_ids: list[int] | None = None) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        self._streams[rid] = (iter(self.engine.stream(request)), len(prompt_ids or ()))
        return rid

    def cancel(self, rid: int) -> None:
        entry = self._streams.pop(rid, None)
        if entry is not None and hasattr(entry[0], "close"):
            entry[0].close()  # type: ignore[union-attr]

    def step(self) -> list[BatchEvent]:
        events = []
        for rid, (it, _) in list(self._streams.items()):
            chunk = next(it, None)
            if chunk is None or chunk.finish_reason is not None:
                del self._streams[rid]
                chunk = chunk or _final_chunk()
            events.append(
                BatchEvent(
                    rid, chunk.text, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens, chunk.logprobs
                )
            )
        return events


class SerialBatch(StreamBatch):
    """The step interface over an engine that holds one sequence (llama.cpp): requests decode
    one after another, in arrival order; each step takes one chunk from the current one."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._queue: dict[int, tuple[GenerationRequest, int]] = {}
        self._current: int | None = None

    def __len__(self) -> int:
        return len(self._queue) + len(self._streams)

    @property
    def running(self) -> int:
        return len(self._streams)

    def add(self, request: GenerationRequest, prompt_ids: list[int] | None = None) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        self._queue[rid] = (request, len(prompt_ids or ()))
        return rid

    def cancel(self, rid: int) -> None:
        self._queue.pop(rid, None)
        super().cancel(rid)

    def step(self) -> list[BatchEvent]:
        if not self._streams and self._queue:
            rid = next(iter(self._queue))
            request, n = self._queue.pop(rid)
            self._streams[rid] = (iter(self.engine.stream(request)), n)
        return super().step()


def _final_chunk() -> StreamChunk:
    from slmops.engines.base import StreamChunk

    return StreamChunk("", finish_reason="stop")
