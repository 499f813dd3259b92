"""The one interface every inference backend implements.

An engine takes :class:`GenerationRequest` objects (a raw prompt or chat messages plus
:class:`GenerationParams`) and returns :class:`GenerationResult` objects, or streams text
chunks. Chat messages are rendered with the model's own chat template inside the engine;
callers never format prompts themselves.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from slmops.errors import EngineError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters honoured identically by every engine.

    ``temperature == 0`` means greedy decoding. ``seed`` makes sampling reproducible:
    the same request with the same seed gives the same text, alone or in a batch.
    ``grammar`` (an llguidance grammar from :mod:`slmops.engines.grammar`) constrains the
    answer to that grammar in local engines; ``response_format`` is the same constraint as the
    OpenAI request field, which remote engines send (both set by
    :func:`~slmops.engines.grammar.with_json_schema`). ``logprobs`` asks for each generated token's log-probability
    plus that many alternatives (0 = the chosen token only); ``None`` = none.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = field(default=None, repr=False)
    logprobs: int | None = None
    response_format: str | None = field(default=None, repr=False)  # OpenAI JSON, what remote engines send

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs must be in 0..20 (got {self.logprobs})")
        if any(not s for s in self.stop):
            problems.append("stop sequences must be non-empty strings")
        if problems:
            raise EngineError("Invalid generation parameters: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class Message:
    """A chat message; an assistant message may carry ``tool_calls`` as ``(id, name, arguments
    JSON)`` and a ``tool`` message the ``tool_call_id`` it answers."""

    role: str
    content: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    tool_call_id: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": json.loads(a or "{}")}}
                for i, n, a in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one of ``prompt`` (raw text, no template) or ``messages`` (chat).

    ``adapter`` picks one of the adapters an engine was opened with (``open_engine("base+a,b")``);
    ``None`` is the model as opened (for a multi-adapter engine: the base without adapters).
    ``tools`` is the JSON text of the function definitions the model may call (chat only)."""

    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    adapter: str | None = None
    tools: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise EngineError("A generation request needs exactly one of 'prompt' or 'messages'.")

    @classmethod
    def chat(cls, text: str, params: GenerationParams | None = None, system: str | None = None) -> GenerationRequest:
        msgs = ([Message("system", system)] if system else []) + [Message("user", text)]
        return cls(messages=tuple(msgs), params=params or GenerationParams())


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model (before temperature, top_p and any
    grammar mask), and the ``top`` most likely alternatives as ``(token_id, logprob)``."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    seconds: float = 0.0  # wall time from the start of its batch (or HTTP request) to its last token
    logprobs: tuple[TokenLogprob, ...] | None = None  # when params.logprobs was set

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class StreamChunk:
    """A piece of generated text; the last chunk of a stream carries ``finish_reason``
    and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens behind this chunk (when asked for)


class Engine(abc.ABC):
    """Backend-neutral inference: batched generation, streaming, token counting."""

    name: str = "engine"

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a batch; results are in request order."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Yield text chunks as they are produced; never splits a UTF-8 character."""

    @abc.abstractmethod
    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens the request would use (after the chat template)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, HTTP connections, memory)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
