"""The ONNX Runtime GenAI engine: runs a model folder made by onnxruntime-genai's builder
(``slmops optimize --to onnx``) with the same semantics as the torch engine.

Prompts are built with the model's Hugging Face tokenizer and chat template (so both
engines see identical token ids), text is assembled with the shared incremental decoder and
stop matcher, and a row ends at any of ``genai_config.json``'s end-of-sequence ids (the
optimizer writes the chat template's end-of-turn ids there). Greedy requests run together in
one right-padded batch; a sampling request runs on its own generator seeded with its seed, so
the same seed gives the same text alone or next to other requests.

A model built with ``--keep-adapters`` carries LoRA adapter files (``adapters.json``): they are
loaded once with ``og.Adapters``, a request picks one by name (``GenerationRequest.adapter``;
none means the manifest's default, the adapter the model was optimized from), and requests for
different adapters run in different batches.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmops.engines.base import (
    Engine,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    TokenLogprob,
)
from slmops.engines.batching import StreamBatch
from slmops.engines.grammar import RowConstraint, mask_numpy, row_constraint
from slmops.engines.onnx_manifest import read_manifest
from slmops.engines.ort_batching import DecoderGraph, OrtDecodeBatch
from slmops.engines.prefix_cache import PrefixCache
from slmops.engines.text import IncrementalDecoder, StopMatcher
from slmops.engines.torch_engine import TorchEngine, _generate_batched, _stream_batched
from slmops.errors import EngineError, InvalidModelError


@dataclass
class _Row:
    index: int
    prompt: list[int]
    params: GenerationParams
    max_new: int
    decoder: IncrementalDecoder
    stops: StopMatcher
    pieces: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish: FinishReason | None = None
    finished_at: float = 0.0
    adapter: str | None = None
    constraint: RowConstraint | None = None  # the row's grammar (structured output)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last_logprob: TokenLogprob | None = None


def _load_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise EngineError(
            f"Running ONNX GenAI models needs onnxruntime-genai ({exc}).", "Install it: pip install onnxruntime-genai"
        ) from exc
    return og


class OrtGenAIEngine(Engine):
    name = "onnx-genai"

    # the chat template and raw-prompt handling are the torch engine's (one implementation)
    prompt_ids = TorchEngine.prompt_ids

    def __init__(self, path: Path, *, threads: int | None = None, max_batch_size: int = 16) -> None:
        from slmops.models.loader import load_tokenizer

        cfg_path = path / "genai_config.json"
        if not cfg_path.exists():
            raise InvalidModelError(f"{path} has no genai_config.json.", "Rebuild it with `slmops optimize --to onnx`.")
        genai = json.loads(cfg_path.read_text(encoding="utf-8"))["model"]
        providers = genai["decoder"]["session_options"].get("provider_options", [])
        # a CUDA build keeps its provider only when asked to and the runtime has one
        self._cuda = bool(os.environ.get("SLMOPS_ORT_CUDA")) and any("cuda" in p for p in providers)
        self._threads = threads
        self._og: Any = None
        self._config: Any = None
        self._og_model: Any = None
        self.path = path
        self.tokenizer = load_tokenizer(path)
        eos = genai.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = genai.get("pad_token_id")
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self.context_length = int(genai.get("context_length") or 1 << 30)
        self.vocab_size = int(genai.get("vocab_size") or len(self.tokenizer))
        self.max_batch_size = max_batch_size
        # continuous batching and prefix caching on the decoder graph (see ort_batching); models
        # with adapters, or graphs it does not know, run on the runtime's generator instead. The
        # graph path never loads onnxruntime-genai (its own copy of the runtime: ~40 MB resident)
        self.adapters, self.default_adapter, self._og_adapters = (), None, None
        self.graph = None
        manifest = read_manifest(path)
        if not manifest and not self._cuda:
            self.graph = DecoderGraph.open(path, threads=threads)
        self.prefix_cache = PrefixCache() if self.graph is not None else None
        if self.graph is None:
            self.adapters, self.default_adapter, self._og_adapters = self._load_adapters(path, manifest)
            _ = self.og_model  # load now: a bad file fails at open, not at the first request

    @property
    def og(self) -> Any:
        """onnxruntime-genai and this model's runtime config, set up on first use (only the
        generator path, for adapters and graphs the batcher does not drive, needs them)."""
        if self._og is None:
            og = _load_og()
            config = og.Config(str(self.path))
            config.clear_providers()
            if self._cuda:
                config.append_provider("cuda")
            if self._threads:
                overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self._threads}}}}
                config.overlay(json.dumps(overlay))
            self._og, self._config = og, config
        return self._og

    @property
    def og_model(self) -> Any:
        """The runtime's model, loaded on first use (only the generator path needs it)."""
        if self._og_model is None:
            og = self.og
            try:
                self._og_model = og.Model(self._config)
            except Exception as exc:  # onnxruntime raises RuntimeError/OrtException for a bad file
                msg = f"Could not load the ONNX model at {self.path} ({exc})."
                raise InvalidModelError(msg, "Rebuild it.") from exc
        return self._og_model

    def new_batch(self) -> OrtDecodeBatch | StreamBatch:
        """A step-level batch requests join and leave between steps (continuous batching); the
        runtime's per-request streams, taking turns, for models the decoder batcher cannot drive."""
        if self.graph is None:
            return StreamBatch(self)
        return OrtDecodeBatch(self, self.graph, self.prefix_cache)

    def _load_adapters(self, path: Path, manifest: dict[str, Any] | None) -> tuple[tuple[str, ...], str | None, Any]:
        if not manifest:
            return (), None, None
        loaded = self.og.Adapters(self.og_model)
        for name, rel in manifest["adapters"].items():
            try:
                loaded.load(str(path / rel), name)
            except Exception as exc:  # onnxruntime raises RuntimeError for a bad or missing file
                raise InvalidModelError(f"Could not load adapter {name!r} from {path / rel} ({exc}).") from exc
        return tuple(manifest["adapters"]), manifest.get("default"), loaded

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    # -- public API ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self.graph is not None:
            return _generate_batched(self, requests)
        t0 = time.perf_counter()
        rows: dict[int, _Row] = {}
        for row, _text in self._run(requests):
            rows[row.index] = row
        return [
            GenerationResult(
                text="".join(r.pieces),
                prompt_tokens=len(r.prompt),
                completion_tokens=r.completion_tokens,
                finish_reason=r.finish or "length",
                seconds=r.finished_at - t0,
                logprobs=tuple(r.logprobs) if r.params.logprobs is not None else None,
            )
            for r in (rows[i] for i in range(len(requests)))
        ]

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        if self.graph is not None:
            yield from _stream_batched(self, request)
            return
        for row, text in self._run([request]):
            if text or row.last_logprob is not None:
                yield StreamChunk(text, logprobs=(row.last_logprob,) if row.last_logprob is not None else ())
            if row.finish is not None:
                yield StreamChunk(
                    "", finish_reason=row.finish, prompt_tokens=len(row.prompt), completion_tokens=row.completion_tokens
                )

    def logits(self, ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """Logits for every position of one token sequence (``[len(ids), vocab]``), for scoring."""
        if self.graph is not None and adapter is None and self.default_adapter is None:
            g = self.graph
            bufs = [np.zeros((1, g.kv_heads, len(ids), g.head_size), dtype=g.kv_dtype) for _ in g.past]
            return np.asarray(g.run(np.asarray([ids]), [len(ids)], bufs)[0], dtype=np.float32)
        params = self.og.GeneratorParams(self.og_model)
        params.set_search_options(max_length=min(len(ids) + 1, self.context_length), batch_size=1)
        gen = self.og.Generator(self.og_model, params)
        self._activate(gen, adapter or self.default_adapter)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        return np.asarray(gen.get_output("logits"), dtype=np.float32)[0]

    # -- the decode loop ---------------------------------------------------------------------
    def _activate(self, gen: Any, adapter: str | None) -> None:
        if adapter is not None:
            gen.set_active_adapter(self._og_adapters, adapter)

    def _adapter(self, request: GenerationRequest) -> str | None:
        name = getattr(request, "adapter", None)
        if name is None:
            return self.default_adapter
        if name not in self.adapters:
            kept = f"its adapters are {', '.join(self.adapters)}" if self.adapters else "it has no separate adapters"
            raise EngineError(
                f"Adapter {name!r} was asked for, but {self.path.name} cannot run it ({kept}).",
                "Keep it at conversion (`slmops optimize ADAPTER --to onnx --keep-adapters --adapter OTHER`), "
                "or merge it.",
            )
        return name

    def _new_row(self, index: int, request: GenerationRequest) -> _Row:
        adapter = self._adapter(request)
        prompt = self.prompt_ids(request)
        room = self.context_length - len(prompt)
        if room < 1:
            raise EngineError(
                f"The prompt has {len(prompt)} tokens but the model's context window is {self.context_length}.",
                "Shorten the prompt.",
            )
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        max_new = min(request.params.max_tokens, room)
        row = _Row(
            index, prompt, request.params, max_new, IncrementalDecoder(decode), StopMatcher(request.params.stop),
            adapter=adapter,
        )
        if request.params.grammar is not None:
            row.constraint = row_constraint(self, request.params.grammar, self.vocab_size)
        return row

    def _run(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[_Row, str]]:
        rows = [self._new_row(i, r) for i, r in enumerate(requests)]  # validates every prompt first
        groups: list[list[_Row]] = []
        for adapter in dict.fromkeys(r.adapter for r in rows):  # one adapter per generator
            greedy = [r for r in rows if r.params.temperature <= 0 and r.adapter == adapter]
            groups += [greedy[i : i + self.max_batch_size] for i in range(0, len(greedy), self.max_batch_size)]
        groups += [[r] for r in rows if r.params.temperature > 0]
        for group in groups:
            yield from self._decode(group)

    def _decode(self, rows: list[_Row]) -> Iterator[tuple[_Row, str]]:
        width = max(len(r.prompt) for r in rows)
        tokens = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        for i, r in enumerate(rows):  # right padding: what the runtime's batching expects
            tokens[i, : len(r.prompt)] = r.prompt
        p = rows[0].params
        options: dict[str, Any] = {
            "batch_size": len(rows),
            "max_length": min(self.context_length, width + max(r.max_new for r in rows)),
            "do_sample": p.temperature > 0,
        }
        if p.temperature > 0:
            seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
            options.update(temperature=p.temperature, top_p=p.top_p, top_k=0, random_seed=seed)
        params = self.og.GeneratorParams(self.og_model)
        params.set_search_options(**options)
        gen = self.og.Generator(self.og_model, params)
        self._activate(gen, rows[0].adapter)
        gen.append_tokens(tokens)
        active = list(range(len(rows)))
        # structured output and logprobs read the step's logits; a grammar masks them per row
        # (the runtime's own guidance takes one grammar per generator, not one per row)
        hooks = any(r.constraint is not None or r.params.logprobs is not None for r in rows)
        while active:
            if gen.is_done():  # the runtime's length limit: whoever is left ran out of room
                for slot in active:
                    tail = self._finish(rows[slot], "length")
                    rows[slot].pieces.append(tail)
                    yield rows[slot], tail
                return
            raw = None
            if hooks:
                raw = np.array(gen.get_logits(), dtype=np.float32).reshape(len(rows), -1)
                pairs = [(s, rows[s].constraint) for s in active if rows[s].constraint is not None]
                if pairs:
                    masked = raw.copy()
                    mask_numpy(masked, pairs)
                    gen.set_logits(masked)
            gen.generate_next_token()
            next_tokens = gen.get_next_tokens()
            for slot in list(active):
                row = rows[slot]
                token = int(next_tokens[slot])
                row.last_logprob = None
                if raw is not None and row.params.logprobs is not None and token not in self.eos_ids:
                    row.last_logprob = _logprob(raw[slot], token, row.params.logprobs)
                    row.logprobs.append(row.last_logprob)
                text = self._advance(row, token)
                if row.finish is not None:
                    active.remove(slot)
                yield row, text

    def _advance(self, row: _Row, token: int) -> str:
        """Feed one generated token to a row; returns the text it may emit now."""
        row.completion_tokens += 1  # counts the end-of-turn token too, as the torch engine does
        if token in self.eos_ids:
            text = self._finish(row, "stop")
        else:
            if row.constraint is not None:
                row.constraint.consume(token)
            text = row.stops.feed(row.decoder.push(token))
            if row.stops.stopped or (row.constraint is not None and row.constraint.done):
                text += self._finish(row, "stop")
            elif row.completion_tokens >= row.max_new:
                text += self._finish(row, "length")
        row.pieces.append(text)
        return text

    @staticmethod
    def _finish(row: _Row, reason: FinishReason) -> str:
        """Mark the row finished; returns the held-back text it may still emit."""
        row.finish, row.finished_at = reason, time.perf_counter()
        return row.stops.flush()


def _logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    x = logits.astype(np.float64)
    x = x - x.max()
    lp = x - np.log(np.exp(x).sum())
    alts: tuple[tuple[int, float], ...] = ()
    if top:
        idx = np.argsort(-lp)[:top]
        alts = tuple((int(i), float(lp[i])) for i in idx)
    return TokenLogprob(token, float(lp[token]), alts)
