"""The llama.cpp engine (through llama-cpp-python, the optional ``llamacpp`` extra) for GGUF
files. Chat messages are rendered with the GGUF's own chat template; text is assembled with
the shared incremental decoder and stop matcher; a row ends at the end-of-generation token or
the template's end-of-turn token. llama.cpp holds one sequence at a time here, so a batch
runs request by request (each seeded request reseeds, so seeds reproduce alone or in a batch).

One ``Llama`` context is one sequence: requests never share it. A generation holds the engine's
lock from its first token to its last (a stream until it ends or is closed), so concurrent callers
on other threads wait their turn; the server's scheduler runs the engine through a
:class:`~slmops.engines.batching.SerialBatch` (one request decodes, the others queue), never two
interleaved streams.

Select it for GGUF models with ``SLMOPS_GGUF_ENGINE=llamacpp`` (the torch engine is the default).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from slmops.engines.base import (
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from slmops.engines.batching import SerialBatch
from slmops.engines.text import IncrementalDecoder, StopMatcher
from slmops.errors import EngineError, InvalidModelError

END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


class LlamaCppEngine(Engine):
    name = "llama.cpp"

    def __init__(self, gguf_path: Path, *, threads: int | None = None, n_ctx: int = 4096) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineError(
                f"The llama.cpp engine needs llama-cpp-python ({exc}).",
                "Install the extra: pip install 'slmops[llamacpp]' (it compiles llama.cpp, a few minutes).",
            ) from exc
        threads = threads or os.cpu_count() or 1
        try:
            self.llm = Llama(str(gguf_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise InvalidModelError(f"llama.cpp could not load {gguf_path} ({exc}).", "Re-export the GGUF.") from exc
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread generating now
        meta: dict[str, Any] = self.llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        self.context_length = self.llm.n_ctx()
        self.eos_ids = {self.llm.token_eos()}
        for tok in END_OF_TURN:
            ids = self.llm.tokenize(tok.encode(), add_bos=False, special=True)
            if len(ids) == 1 and self.chat_template and tok in self.chat_template:
                self.eos_ids.add(ids[0])

    # -- prompts ---------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if getattr(request, "adapter", None):
            raise EngineError(
                f"Adapter {request.adapter!r} was asked for, but GGUF models run with adapters merged.",
                "Merge it first: `slmops optimize ADAPTER --to gguf`.",
            )
        if request.messages is None:
            return self.llm.tokenize(str(request.prompt).encode(), add_bos=True, special=False)
        if not self.chat_template:
            raise EngineError(
                "This GGUF has no chat template, so chat messages cannot be formatted.",
                "Send a raw prompt instead (e.g. `slmops generate --raw`).",
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos, eos = (
            self.llm.detokenize([t], special=True).decode() for t in (self.llm.token_bos(), self.llm.token_eos())
        )
        fmt = Jinja2ChatFormatter(self.chat_template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        text = fmt(messages=[{"role": m.role, "content": m.content} for m in request.messages]).prompt
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    def new_batch(self) -> SerialBatch:
        """The scheduler's batch: requests decode one after another on the one context."""
        return SerialBatch(self)

    # -- public API ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        t0 = time.perf_counter()
        prompts = [self.prompt_ids(r) for r in requests]  # validate every prompt before decoding
        results = []
        for request, prompt in zip(requests, prompts, strict=True):
            chunks = list(self._decode(request, prompt))
            last = chunks[-1]  # the closing chunk carries the finish reason and counts
            text = "".join(c.text for c in chunks)
            seconds = time.perf_counter() - t0
            results.append(
                GenerationResult(
                    text, last.prompt_tokens, last.completion_tokens, last.finish_reason or "length", seconds
                )
            )
        return results

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        for chunk in self._decode(request, self.prompt_ids(request)):
            if chunk.text or chunk.finish_reason:
                yield chunk

    def _decode(self, request: GenerationRequest, prompt: list[int]) -> Iterator[StreamChunk]:
        p = request.params
        if p.grammar is not None or p.logprobs is not None:  # never answer unconstrained in silence
            raise EngineError(
                "The llama.cpp engine does not do structured output or logprobs here.",
                "Unset SLMOPS_GGUF_ENGINE to run the GGUF model on the torch engine, or use its ONNX build.",
            )
        room = self.context_length - len(prompt)
        if room < 1:
            raise EngineError(
                f"The prompt has {len(prompt)} tokens but the context window is {self.context_length}.",
                "Shorten the prompt.",
            )
        if self._owner == threading.get_ident():
            raise EngineError(
                "This llama.cpp engine is already generating on this thread (one context, one sequence).",
                "Finish or close the other stream first, or open a second engine.",
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield from self._decode_locked(p, prompt, room)
            finally:
                self._owner = None

    def _decode_locked(self, p: Any, prompt: list[int], room: int) -> Iterator[StreamChunk]:
        max_new = min(p.max_tokens, room)
        decoder = IncrementalDecoder(lambda ids: self.llm.detokenize(list(ids)).decode("utf-8", errors="replace"))
        stops = StopMatcher(p.stop)
        self.llm.set_seed(p.seed if p.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1)
        count, finish = 0, None
        tokens = self.llm.generate(prompt, temp=p.temperature, top_p=p.top_p, top_k=0, reset=True)
        for token in tokens:
            count += 1
            if token in self.eos_ids:
                text, finish = stops.flush(), "stop"
            else:
                text = stops.feed(decoder.push(token))
                if stops.stopped:
                    finish = "stop"
                elif count >= max_new:
                    text, finish = text + stops.flush(), "length"
            yield StreamChunk(text)
            if finish is not None:
                break
        reason: FinishReason = finish or "length"
        yield StreamChunk("", finish_reason=reason, prompt_tokens=len(prompt), completion_tokens=count)

    def close(self) -> None:
        with self._lock:
            if hasattr(self.llm, "close"):
                self.llm.close()
