"""OpenAI-compatible request and response schemas, and the one error shape.

Fields are in the order of the OpenAI API reference; our extras sit in a marked block.
Requests forbid unknown fields, so a typo is a 400 naming the field instead of being
ignored. A request turns itself into engine :class:`GenerationParams` with the precedence
user → model default → OpenAI default.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.engines.base import GenerationParams, GenerationRequest, Message

FinishReason = Literal["stop", "length"]


class APIError(Exception):
    """Becomes ``{"error": {"message", "type", "param", "code"}}`` with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- requests ------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def to_message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return Message("system" if self.role == "developer" else self.role, text)


class StreamOptions(_Request):
    include_usage: bool = False


@dataclass(frozen=True)
class ModelDefaults:
    """Sampling defaults a model ships (its generation config); ``None`` = no opinion."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


OPENAI_DEFAULTS = ModelDefaults(temperature=1.0, top_p=1.0)


def _pick(*values: Any) -> Any:
    return next(v for v in values if v is not None)


class _Sampling(_Request):
    """Fields shared by chat and text completions (OpenAI order within each request)."""

    default_max_tokens: ClassVar[int | None] = None  # OpenAI's default; None = as many as allowed

    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ValueError(f"'{name}' other than 0 is not supported by this server")
        if self.logit_bias:
            raise ValueError("'logit_bias' is not supported by this server")
        stops = self.stops
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("'stop' takes at most 4 non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_params(self, defaults: ModelDefaults, cap: int, choice: int = 0) -> GenerationParams:
        """Engine parameters for choice ``choice`` (choice i samples with ``seed + i``)."""
        asked = self.requested_max_tokens()
        if asked is not None and asked > cap:
            raise APIError(400, f"max_tokens is {asked}, above this server's cap of {cap}.", param="max_tokens")
        return GenerationParams(
            max_tokens=min(_pick(asked, defaults.max_tokens, self.default_max_tokens, cap), cap),
            temperature=_pick(self.temperature, defaults.temperature, OPENAI_DEFAULTS.temperature),
            top_p=_pick(self.top_p, defaults.top_p, OPENAI_DEFAULTS.top_p),
            stop=self.stops,
            seed=None if self.seed is None else self.seed + choice,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: Literal[False] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def to_requests(self, defaults: ModelDefaults, cap: int) -> list[GenerationRequest]:
        messages = tuple(m.to_message() for m in self.messages)
        return [GenerationRequest(messages=messages, params=self.to_params(defaults, cap, i)) for i in range(self.n)]


class CompletionRequest(_Sampling):
    default_max_tokens: ClassVar[int | None] = 16
    model: str
    prompt: str | list[str]
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None

    def to_requests(self, defaults: ModelDefaults, cap: int) -> list[GenerationRequest]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise APIError(400, "'prompt' must not be an empty list.", param="prompt")
        return [
            GenerationRequest(prompt=p, params=self.to_params(defaults, cap, i)) for p in prompts for i in range(self.n)
        ]


# -- responses -----------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class ResponseMessage(BaseModel):
    content: str | None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"


class ChatChoice(BaseModel):
    finish_reason: FinishReason
    index: int
    message: ResponseMessage
    logprobs: None = None


class _Envelope(BaseModel):
    id: str
    choices: list[Any]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class ChatCompletionResponse(_Envelope):
    choices: list[ChatChoice]
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage


class Delta(BaseModel):
    content: str | None = Field(None, exclude_if=lambda v: v is None)
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)


class ChunkChoice(BaseModel):
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None
    index: int


class ChatCompletionChunk(_Envelope):
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)


class CompletionChoice(BaseModel):
    finish_reason: FinishReason | None
    index: int
    logprobs: None = None
    text: str


class CompletionResponse(_Envelope):
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)


class ModelCard(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str = "slmops"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
