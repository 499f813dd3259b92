"""OpenAI-compatible request and response schemas, and the one error shape.

Fields are in the order of the OpenAI API reference; our extras sit in a marked block.
Requests forbid unknown fields, so a typo is a 400 naming the field instead of being
ignored. A request turns itself into engine :class:`GenerationParams` with the precedence
user → model default → OpenAI default.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.engines.base import GenerationParams, GenerationRequest, Message
from slmops.engines.grammar import GrammarError, json_object_grammar, json_schema_grammar
from slmops.engines.tools import tool_call_grammar

FinishReason = Literal["stop", "length", "tool_calls"]


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


class ToolCallFunction(_Request):
    name: str
    arguments: str = Field(description="The arguments as a JSON object text.")


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # assistant messages
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    # tool messages
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id' (the id of the call it answers)")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry 'tool_call_id'")
        return self

    def to_message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or ())
        calls = tuple((c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        return Message(
            "system" if self.role == "developer" else self.role, text, tool_calls=calls, tool_call_id=self.tool_call_id
        )


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class JSONSchemaFormat(_Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text"]


class JSONObjectFormat(_Request):
    type: Literal["json_object"]


class JSONSchemaResponseFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaResponseFormat, Field(discriminator="type")]


@lru_cache(maxsize=256)
def _schema_grammar(schema_json: str, strict: bool) -> str:
    return json_schema_grammar(json.loads(schema_json), strict=strict, what="response_format.json_schema.schema")


@lru_cache(maxsize=256)
def _tools_grammar(functions_json: str, parallel: bool) -> str:
    return tool_call_grammar(json.loads(functions_json), parallel=parallel)


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
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    # -- tools ---------------------------------------------------------------------------------
    @property
    def tool_mode(self) -> str:
        """``none`` (no tools in play), ``auto``, ``required`` or ``named``."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    @property
    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools or ()]

    def check(self) -> None:
        """Checks across fields and messages; each a 400 naming the parameter."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise APIError(400, "'tool_choice' needs 'tools' to choose from.", param="tool_choice")
        names = self.tool_names
        if len(set(names)) != len(names):
            raise APIError(400, "Two tools have the same function name.", param="tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names the function {self.tool_choice.function.name!r}, which is not in 'tools' "
                f"({', '.join(names)}).",
                param="tool_choice",
                code="unknown_tool",
            )
        open_calls: set[str] = set()
        for i, m in enumerate(self.messages):
            if m.tool_calls:
                open_calls |= {c.id for c in m.tool_calls}
                for j, c in enumerate(m.tool_calls):
                    try:
                        args = json.loads(c.function.arguments or "{}")
                    except ValueError:
                        args = None
                    if not isinstance(args, dict):
                        raise APIError(
                            400,
                            f"messages[{i}].tool_calls[{j}].function.arguments is not a JSON object text.",
                            param=f"messages[{i}].tool_calls[{j}].function.arguments",
                        )
            if m.role == "tool" and m.tool_call_id not in open_calls:
                raise APIError(
                    400,
                    f"messages[{i}] is a tool message for the call {m.tool_call_id!r}, but no earlier assistant "
                    "message made a call with that id.",
                    param=f"messages[{i}].tool_call_id",
                    code="unknown_tool_call",
                )
        self.grammar()  # compiles (and caches) the constraint: a bad schema is a 400 now

    def grammar(self) -> str | None:
        mode = self.tool_mode
        if mode in ("required", "named"):
            tools = self.tools or []
            if mode == "named":
                assert isinstance(self.tool_choice, NamedToolChoice)
                tools = [t for t in tools if t.function.name == self.tool_choice.function.name]
            functions = [t.function.model_dump(exclude_none=True) for t in tools]
            parallel = mode == "required" and self.parallel_tool_calls is not False
            try:
                return _tools_grammar(json.dumps(functions, sort_keys=True), parallel)
            except GrammarError as exc:
                raise APIError(400, str(exc), param=_tool_param(str(exc)), code="invalid_schema") from exc
        fmt = self.response_format
        try:
            if isinstance(fmt, JSONObjectFormat):
                return json_object_grammar()
            if isinstance(fmt, JSONSchemaResponseFormat):
                schema = fmt.json_schema.schema_
                if schema is None:
                    raise APIError(
                        400, "response_format.json_schema needs a 'schema'.", param="response_format.json_schema"
                    )
                strict = fmt.json_schema.strict is not False
                return _schema_grammar(json.dumps(schema, sort_keys=True), strict)
        except GrammarError as exc:
            param = "response_format.json_schema.schema"
            code = "unsupported_schema_keyword" if exc.keyword not in (None, "size", "depth") else "invalid_schema"
            raise APIError(400, str(exc), param=param, code=code) from exc
        return None

    def tools_json(self) -> str | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return json.dumps([t.function.model_dump(exclude_none=True) for t in self.tools])

    def to_requests(self, defaults: ModelDefaults, cap: int) -> list[GenerationRequest]:
        messages = tuple(m.to_message() for m in self.messages)
        grammar = self.grammar()
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        tools = self.tools_json()
        return [
            GenerationRequest(
                messages=messages,
                params=replace(self.to_params(defaults, cap, i), grammar=grammar, logprobs=logprobs),
                tools=tools,
            )
            for i in range(self.n)
        ]


def _tool_param(message: str) -> str:
    head = message.split(" ", 1)[0]
    return head if head.startswith("tools[") else "tools"


class CompletionRequest(_Sampling):
    default_max_tokens: ClassVar[int | None] = 16
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or as token ids (lm-evaluation-harness sends ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        if not p:
            raise APIError(400, "'prompt' must not be an empty list.", param="prompt")
        return list(p)  # type: ignore[arg-type]

    def to_requests(self, defaults: ModelDefaults, cap: int) -> list[GenerationRequest]:
        """One request per prompt and choice; a token-id prompt carries an empty text prompt (the
        ids travel beside it, see :meth:`prompt_ids_of`)."""
        params = [replace(self.to_params(defaults, cap, i), logprobs=self.logprobs) for i in range(self.n)]
        return [
            GenerationRequest(prompt=p if isinstance(p, str) else "", params=params[i])
            for p in self.prompts()
            for i in range(self.n)
        ]

    def prompt_ids_of(self) -> list[list[int] | None]:
        """Token ids given in the request, one entry per request of :meth:`to_requests`."""
        return [None if isinstance(p, str) else p for p in self.prompts() for _ in range(self.n)]


# -- responses -----------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobInfo(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobInfo] | None
    refusal: list[TokenLogprobInfo] | None = None


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ResponseMessage(BaseModel):
    content: str | None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ResponseToolCall] | None = Field(None, exclude_if=lambda v: v is None)


class ChatChoice(BaseModel):
    finish_reason: FinishReason
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None


class _Envelope(BaseModel):
    id: str
    choices: list[Any]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class ChatCompletionResponse(_Envelope):
    choices: list[ChatChoice]
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage


class FunctionDelta(BaseModel):
    name: str | None = Field(None, exclude_if=lambda v: v is None)
    arguments: str | None = Field(None, exclude_if=lambda v: v is None)


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(None, exclude_if=lambda v: v is None)
    type: Literal["function"] | None = Field(None, exclude_if=lambda v: v is None)
    function: FunctionDelta | None = Field(None, exclude_if=lambda v: v is None)


class Delta(BaseModel):
    content: str | None = Field(None, exclude_if=lambda v: v is None)
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)
    tool_calls: list[ToolCallDelta] | None = Field(None, exclude_if=lambda v: v is None)


class ChunkChoice(BaseModel):
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    index: int


class ChatCompletionChunk(_Envelope):
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)


class CompletionLogprobs(BaseModel):
    """The legacy shape; with ``echo`` the first prompt token has no log-probability (null)."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    finish_reason: FinishReason | None
    index: int
    logprobs: CompletionLogprobs | None = None
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


# -- embeddings ------------------------------------------------------------------------------
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]]
    model: str
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        """Each input as text or token ids; an empty input (or list) is a 400 naming ``input``."""
        x = self.input
        items: list[Any] = [x] if isinstance(x, str) else ([list(x)] if x and isinstance(x[0], int) else list(x))
        if not items:
            raise APIError(400, "'input' must not be an empty list.", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"'input' has {len(items)} items; the limit is {MAX_EMBEDDING_INPUTS}.", param="input")
        for i, item in enumerate(items):
            if len(item) == 0:
                where = "input" if len(items) == 1 else f"input[{i}]"
                raise APIError(400, f"'{where}' is empty; send some text.", param="input", code="empty_input")
        return items


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
