"""Continuous batching for ONNX Runtime GenAI model folders, on the decoder graph itself.

Why not the runtime's own batching: onnxruntime-genai 0.18's ``og.Engine``/``og.Request`` API
batches requests dynamically only for models built with ``use_paged_attention`` (PagedAttention),
which its builder supports for CUDA in fp16/bf16 only; on a CPU build the Engine runs one
resident request at a time. Its ``og.Generator`` fixes the batch when it is created, so rows
cannot join or leave. So this module runs the builder's decoder graph (``model.onnx``: input ids,
attention mask, one past/present key and value per layer, GroupQueryAttention inside) with an
``onnxruntime.InferenceSession`` and keeps the KV cache itself:

* one buffer per layer and key/value, ``[rows, kv_heads, capacity, head_dim]``, bound as both
  the past input and the present output (GroupQueryAttention's shared-buffer mode: each step
  writes one column per row in place, nothing is copied). Row ``b``'s tokens sit at columns
  ``[0, len_b)``; the attention mask only tells each row its own length;
* running rows occupy slots ``0..B-1``; newcomers are prefilled together straight into the
  next free slots (right padding, one forward pass); a finished row's slot is filled by
  moving the last row into it;
* capacity grows (reallocated, doubling) to the longest row's prompt plus its token budget,
  and never beyond the model's context window: the cache is sized to the requests it holds;
* a prompt whose first blocks are in the engine's :class:`PrefixCache` copies their KV into its
  slot and prefills only the rest (one row per forward pass: GroupQueryAttention accepts a
  multi-token input after a past only at batch size 1). Newcomers that arrive together and
  share a prefix prefill it once.

Sampling is slmops's own (greedy, or nucleus with each row's own seeded RNG), so a seeded
request gives the same text alone or in a batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slmops.engines.base import GenerationRequest
from slmops.engines.batching import BatchEvent, _Row, choose, new_row
from slmops.engines.prefix_cache import PrefixCache, shared_prefix_groups
from slmops.errors import InvalidModelError

if TYPE_CHECKING:
    from slmops.engines.decoder import GraphDecoder

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32}


@dataclass
class DecoderGraph:
    """The decoder session of a genai folder and the names and shapes of its KV inputs."""

    session: Any
    layers: int
    kv_heads: int
    head_size: int
    kv_dtype: Any
    ids_dtype: Any
    past: list[str]  # 2 per layer: key, value
    present: list[str]
    has_positions: bool
    mask_dtype: Any = np.int64

    @classmethod
    def open(cls, path: Path, *, threads: int | None = None) -> DecoderGraph | None:
        """The graph, or ``None`` when its inputs are not the ones this batcher drives."""
        import onnxruntime as ort

        genai = json.loads((path / "genai_config.json").read_text(encoding="utf-8"))["model"]
        dec = genai["decoder"]
        names = dec.get("inputs", {})
        outs = dec.get("outputs", {})
        layers = int(dec["num_hidden_layers"])
        pk, pv = names.get("past_key_names", ""), names.get("past_value_names", "")
        ok, ov = outs.get("present_key_names", ""), outs.get("present_value_names", "")
        if "%d" not in pk or "%d" not in ok:
            return None
        past = [n % i for i in range(layers) for n in (pk, pv)]
        present = [n % i for i in range(layers) for n in (ok, ov)]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle intra-op threads sleep instead of spinning: measured 1.65-1.85x faster single-stream
        # decode than spinning on a shared 2-core machine (bench/RESULTS.md); SLMOPS_ORT_SPIN=1 spins
        opts.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SLMOPS_ORT_SPIN", "0"))
        try:
            session = ort.InferenceSession(str(path / dec["filename"]), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise InvalidModelError(f"Could not load the ONNX model at {path} ({exc}).", "Rebuild it.") from exc
        inputs = {i.name: i for i in session.get_inputs()}
        expected = {names.get("input_ids", "input_ids"), names.get("attention_mask", "attention_mask"), *past}
        extra = set(inputs) - expected
        if not expected <= set(inputs) or extra - {names.get("position_ids", "position_ids")}:
            return None
        if not {outs.get("logits", "logits"), *present} <= {o.name for o in session.get_outputs()}:
            return None
        kv = inputs[past[0]]
        return cls(
            session=session,
            layers=layers,
            kv_heads=int(dec["num_key_value_heads"]),
            head_size=int(dec["head_size"]),
            kv_dtype=_DTYPES.get(kv.type, np.float32),
            ids_dtype=_DTYPES.get(inputs[names.get("input_ids", "input_ids")].type, np.int64),
            past=past,
            present=present,
            has_positions=bool(extra),
            mask_dtype=_DTYPES.get(inputs[names.get("attention_mask", "attention_mask")].type, np.int64),
        )

    def run(self, ids: np.ndarray, totals: list[int], buffers: list[np.ndarray]) -> np.ndarray:
        """One forward pass of rows ``ids`` ([rows, tokens]) whose lengths after this pass are
        ``totals``; ``buffers`` (views ``[rows, kv, capacity, head]``) are updated in place."""
        import onnxruntime as ort

        rows, width = ids.shape[0], max(totals)
        mask = (np.arange(width)[None, :] < np.asarray(totals)[:, None]).astype(self.mask_dtype)
        io = self.session.io_binding()
        io.bind_output("logits")
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=self.ids_dtype))
        io.bind_cpu_input("attention_mask", mask)
        if self.has_positions:
            start = np.asarray(totals)[:, None] - ids.shape[1]
            io.bind_cpu_input("position_ids", (start + np.arange(ids.shape[1])[None, :]).clip(min=0).astype(np.int64))
        for name_in, name_out, buf in zip(self.past, self.present, buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            io.bind_ortvalue_input(name_in, value)
            io.bind_ortvalue_output(name_out, value)
        self.session.run_with_iobinding(io)
        logits = io.get_outputs()[0].numpy()
        assert logits.shape[0] == rows
        return logits


class OrtDecodeBatch:
    """The :class:`~slmops.engines.batching.DecodeBatch` interface over a :class:`DecoderGraph`;
    used from one thread at a time. ``engine`` is the :class:`OrtGenAIEngine` that owns it (typed
    as the :class:`~slmops.engines.decoder.GraphDecoder` protocol: that module imports this one)."""

    def __init__(self, engine: GraphDecoder, graph: DecoderGraph, cache: PrefixCache | None) -> None:
        self.engine, self.graph, self.cache = engine, graph, cache
        self._rows: list[_Row] = []  # slot order
        self._lens: list[int] = []  # tokens in the KV buffer per slot
        self._pending: list[_Row] = []
        self._cancelled: set[int] = set()
        self._buffers: list[np.ndarray] = []
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._rows) + len(self._pending)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, tokens) the KV buffers hold now."""
        return (self._buffers[0].shape[0], self._buffers[0].shape[2]) if self._buffers else (0, 0)

    def add(self, request: GenerationRequest, prompt_ids: list[int] | None = None) -> int:
        eng = self.engine
        eng._adapter(request)  # validates the name (adapter models never reach this batcher)
        row = new_row(self._next_id, request, eng, prompt_ids)  # an id only for a row that joins
        self._next_id += 1
        self._pending.append(row)
        return row.id

    def cancel(self, rid: int) -> None:
        self._cancelled.add(rid)

    def step(self) -> list[BatchEvent]:
        if self._cancelled:
            self._pending = [r for r in self._pending if r.id not in self._cancelled]
            self._drop([s for s, r in enumerate(self._rows) if r.id in self._cancelled])
            self._cancelled.clear()
        parts = []
        if self._rows:
            parts.append(self._forward_running())
        if self._pending:
            newcomers, self._pending = self._pending, []
            parts.append(self._prefill(newcomers))
        if not parts:
            return []
        logits = torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))
        events = choose(logits, self._rows, self.engine.eos_ids)
        self._drop([s for s, r in enumerate(self._rows) if r.finish is not None])
        return events

    # -- internals ---------------------------------------------------------------------------
    def _views(self, start: int, stop: int) -> list[np.ndarray]:
        return [b[start:stop] for b in self._buffers]

    def _forward_running(self) -> np.ndarray:
        n = len(self._rows)
        ids = np.asarray([[r.last_token] for r in self._rows])
        self._lens = [x + 1 for x in self._lens]
        return self.graph.run(ids, self._lens, self._views(0, n))[:, -1, :]

    def _reserve(self, rows: int, tokens: int) -> None:
        """Grow the buffers to hold ``rows`` slots of ``tokens`` columns (doubling, capped)."""
        have_rows, have_tokens = self.capacity
        if rows <= have_rows and tokens <= have_tokens:
            return
        g = self.graph
        new_rows = max(rows, min(2 * have_rows, self.engine.max_batch_size)) if rows > have_rows else have_rows
        new_tokens = (
            min(max(tokens, 2 * have_tokens, 64), self.engine.context_length) if tokens > have_tokens else have_tokens
        )
        used = len(self._rows)
        fresh = []
        for old in self._buffers or [None] * (2 * g.layers):
            buf = np.zeros((new_rows, g.kv_heads, new_tokens, g.head_size), dtype=g.kv_dtype)
            if old is not None and used:
                width = max(self._lens, default=0)
                buf[:used, :, :width] = old[:used, :, :width]
            fresh.append(buf)
        self._buffers = fresh

    def _prefill(self, rows: list[_Row]) -> np.ndarray:
        base = len(self._rows)
        need = max([len(r.prompt) + r.max_new for r in rows] + [n + r.max_new - r.completion_tokens + 1
                                                                  for n, r in zip(self._lens, self._rows, strict=True)])
        self._reserve(base + len(rows), min(need, self.engine.context_length))
        cache, ns = self.cache, ""
        starts = [0] * len(rows)  # prompt tokens already in the slot's KV
        if cache is not None:
            for i, r in enumerate(rows):
                n, blocks = cache.lookup(r.prompt, ns)
                if n:
                    self._write_blocks(base + i, blocks)
                    starts[i] = n
            self._share_prefixes(rows, base, starts)
        logits: list[np.ndarray | None] = [None] * len(rows)
        fresh = [i for i, s in enumerate(starts) if s == 0]
        if fresh:
            # rows without a cached prefix: one right-padded forward into consecutive slots; the
            # slots are contiguous only if those rows are, so move them to the front first
            order = fresh + [i for i in range(len(rows)) if starts[i] > 0]
            rows[:] = [rows[i] for i in order]
            starts[:] = [starts[i] for i in order]
            self._reorder_slots(base, order)
            width = max(len(rows[i].prompt) for i in range(len(fresh)))
            ids = np.zeros((len(fresh), width), dtype=np.int64)
            for i in range(len(fresh)):
                ids[i, : len(rows[i].prompt)] = rows[i].prompt
            totals = [len(rows[i].prompt) for i in range(len(fresh))]
            out = self.graph.run(ids, totals, self._views(base, base + len(fresh)))
            for i in range(len(fresh)):
                logits[i] = out[i, totals[i] - 1]
        for i, r in enumerate(rows):
            if starts[i] > 0:
                ids = np.asarray([r.prompt[starts[i] :]])
                logits[i] = self.graph.run(ids, [len(r.prompt)], self._views(base + i, base + i + 1))[0, -1]
        if cache is not None:
            for i, r in enumerate(rows):
                slot = base + i
                cache.insert(r.prompt, lambda a, b, slot=slot: self._block(slot, a, b), ns)
        self._rows.extend(rows)
        self._lens.extend(len(r.prompt) for r in rows)
        return np.stack(logits)  # type: ignore[arg-type]

    def _share_prefixes(self, rows: list[_Row], base: int, starts: list[int]) -> None:
        """Newcomers that missed the cache but share a prefix prefill it once (into the first
        one's slot), then copy it: they all start after it."""
        misses = [i for i, s in enumerate(starts) if s == 0]
        for members, n in shared_prefix_groups([rows[i].prompt for i in misses], self.cache.block):  # type: ignore[union-attr]
            idx = [misses[m] for m in members]
            first = base + idx[0]
            self.graph.run(np.asarray([rows[idx[0]].prompt[:n]]), [n], self._views(first, first + 1))
            for i in idx:
                if i != idx[0]:
                    for buf in self._buffers:
                        buf[base + i, :, :n] = buf[first, :, :n]
                starts[i] = n
            self.cache.record_shared(len(idx) - 1, n)  # type: ignore[union-attr]

    def _write_blocks(self, slot: int, blocks: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        b = self.cache.block  # type: ignore[union-attr]
        for j, block in enumerate(blocks):
            for layer, (k, v) in enumerate(block):
                self._buffers[2 * layer][slot, :, j * b : (j + 1) * b] = k
                self._buffers[2 * layer + 1][slot, :, j * b : (j + 1) * b] = v

    def _block(self, slot: int, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
        bufs = self._buffers
        return [
            (bufs[2 * i][slot, :, start:stop].copy(), bufs[2 * i + 1][slot, :, start:stop].copy())
            for i in range(self.graph.layers)
        ]

    def _reorder_slots(self, base: int, order: list[int]) -> None:
        if order == sorted(order):
            return
        idx = np.asarray(order) + base
        for buf in self._buffers:
            buf[base : base + len(order)] = buf[idx]

    def _drop(self, slots: list[int]) -> None:
        """Free these slots: the last running row moves into each hole."""
        for s in sorted(slots, reverse=True):
            last = len(self._rows) - 1
            if s != last:
                width = self._lens[last]
                for buf in self._buffers:
                    buf[s, :, :width] = buf[last, :, :width]
                self._rows[s], self._lens[s] = self._rows[last], self._lens[last]
            self._rows.pop()
            self._lens.pop()
        if not self._rows:
            self._buffers = []  # an idle engine holds no KV memory
