"""Serving: one HTTP request → tickets on a model's scheduler → an OpenAI response or SSE stream.

Everything that can fail (unknown model, prompt too long, queue full) fails here, before a
stream opens, so the client sees a real status code. A client that disconnects cancels its
tickets, which leave the running batch at the next step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmops.engines.base import GenerationRequest, TokenLogprob
from slmops.engines.batching import BatchEvent
from slmops.engines.scoring import embed, prompt_logprobs
from slmops.engines.tools import parse_calls
from slmops.errors import EngineError
from slmops.serve.canary import PIN_HEADER
from slmops.serve.metrics import ServeMetrics
from slmops.serve.pool import Loaded, ModelPool
from slmops.serve.protocol import (
    APIError,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    FunctionDelta,
    ResponseMessage,
    ResponseToolCall,
    TokenLogprobInfo,
    ToolCallDelta,
    ToolCallFunction,
    TopLogprob,
    Usage,
    new_id,
)
from slmops.serve.reqlog import RequestLog
from slmops.serve.scheduler import Overloaded, Ticket, loop_sink

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"
CONSTRAINED_ENGINES = ("torch", "onnx-genai")  # engines with per-row grammar masks and logprobs


@dataclass
class Job:
    """The tickets of one HTTP request and what they produced so far."""

    loaded: Loaded
    version: str  # the version that serves it: metric label and response header
    public_model: str
    tickets: list[Ticket]
    queue: asyncio.Queue
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    texts: list[list[str]] = field(default_factory=list)
    logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    finals: dict[int, BatchEvent] = field(default_factory=dict)
    generated: int = 0  # tokens produced so far, finished or not

    async def events(self) -> AsyncIterator[tuple[int, BatchEvent]]:
        while len(self.finals) < len(self.tickets):
            index, item = await self.queue.get()
            if isinstance(item, Exception):
                raise APIError(500, f"Generation failed: {item}", type="server_error")
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.texts[index].append(item.text)
            self.logprobs[index].extend(item.logprobs)
            self.generated += 1
            if item.finish_reason is not None:
                self.finals[index] = item
            yield index, item

    def usage(self) -> Usage:
        """Prompt tokens count once per distinct prompt (``n`` choices share theirs)."""
        prompts: dict[Any, int] = {}
        for i, t in enumerate(self.tickets):
            final = self.finals.get(i)
            count = final.prompt_tokens if final is not None else len(t.prompt_ids or ())
            prompts[(t.request.prompt, t.request.messages)] = count
        return Usage.of(sum(prompts.values()), sum(f.completion_tokens for f in self.finals.values()))

    def cancel(self) -> None:
        self.loaded.worker.cancel(self.tickets)


class Serving:
    def __init__(self, pool: ModelPool, metrics: ServeMetrics, request_log: RequestLog | None) -> None:
        self.pool, self.metrics, self.request_log = pool, metrics, request_log

    async def chat(self, body: ChatCompletionRequest, http: Request) -> Any:
        body.check()
        job = await self._start(body, http)
        rid = new_id("chatcmpl")
        if body.stream:
            return self._sse(job, body, http, lambda c: ChatCompletionChunk(id=rid, model=body.model, choices=c))
        if not await self._collect(job, body, http):
            return Response(status_code=CLIENT_CLOSED)
        choices = []
        for i, t in enumerate(job.texts):
            message, finish = self._message("".join(t), body, job.finals[i].finish_reason)
            lps = self._chat_logprobs(job, job.logprobs[i]) if body.logprobs else None
            choices.append(ChatChoice(index=i, message=message, finish_reason=finish, logprobs=lps))
        resp = ChatCompletionResponse(id=rid, model=body.model, choices=choices, usage=job.usage())
        return JSONResponse(resp.model_dump(), headers=self._headers(job))

    async def completion(self, body: CompletionRequest, http: Request) -> Any:
        job = await self._start(body, http)
        rid = new_id("cmpl")
        if body.stream:
            if body.echo:
                raise APIError(400, "'echo' is not supported with 'stream'.", param="echo")
            return self._sse(job, body, http, lambda c: CompletionResponse(id=rid, model=body.model, choices=c))
        prompt_scores = await self._prompt_scores(job, body) if body.echo and body.logprobs is not None else None
        if not await self._collect(job, body, http):
            return Response(status_code=CLIENT_CLOSED)
        choices = []
        for i, t in enumerate(job.texts):
            text, lps = "".join(t), None
            if body.logprobs is not None:
                seq = (prompt_scores[i] if prompt_scores is not None else []) + list(job.logprobs[i])
                lps = self._completion_logprobs(job, seq, body.logprobs, first=(job.tickets[i].prompt_ids or [0])[0])
            if body.echo:
                text = self._prompt_text(job, i) + text
            finish = job.finals[i].finish_reason
            choices.append(CompletionChoice(index=i, text=text, finish_reason=finish, logprobs=lps))
        resp = CompletionResponse(id=rid, model=body.model, choices=choices, usage=job.usage())
        return JSONResponse(resp.model_dump(), headers=self._headers(job))

    async def embeddings(self, body: EmbeddingRequest, http: Request) -> Any:
        """Mean-pooled, unit-length last hidden states (:func:`slmops.engines.scoring.embed`),
        computed between two decode steps of the model's scheduler."""
        items = body.inputs()
        route = await self.pool.get(body.model, user=body.user, pin=http.headers.get(PIN_HEADER))
        loaded = route.loaded
        http.state.route = (body.model, route.version)
        engine = loaded.engine
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise APIError(400, f"{body.model} runs on an engine that cannot compute embeddings.", param="model")
        ids = [list(tokenizer(x, add_special_tokens=True)["input_ids"]) if isinstance(x, str) else x for x in items]
        limit = loaded.context_length
        for i, seq in enumerate(ids):
            where = "input" if len(ids) == 1 else f"input[{i}]"
            if limit is not None and len(seq) > limit:
                raise APIError(
                    400,
                    f"'{where}' is {len(seq)} tokens; {loaded.key} takes at most {limit}. Shorten it or split it.",
                    param="input",
                    code="context_length_exceeded",
                )
            vocab = getattr(engine, "vocab_size", None) or len(tokenizer)
            if any(not 0 <= t < vocab for t in seq):
                raise APIError(400, f"'{where}' has token ids outside the vocabulary (0..{vocab - 1}).", param="input")

        def run() -> np.ndarray:
            with loaded.worker.exclusive():
                return embed(engine, ids)

        try:
            vectors = await asyncio.to_thread(run)
        except EngineError as exc:
            raise APIError(400, str(exc), param="model") from exc
        if body.dimensions is not None:
            if body.dimensions > vectors.shape[1]:
                raise APIError(
                    400, f"'dimensions' is {body.dimensions}; this model's embeddings have {vectors.shape[1]}.",
                    param="dimensions",
                )  # fmt: skip
            vectors = vectors[:, : body.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        data = [
            EmbeddingData(
                index=i,
                embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else v.tolist(),
            )
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(s) for s in ids)
        resp = EmbeddingResponse(
            data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )
        self.metrics.observe_request(body.model, route.version, 200, prompt_tokens=tokens)
        return JSONResponse(resp.model_dump(), headers={"x-slmops-model-version": route.version})

    # -- tool calls and logprobs -------------------------------------------------------------
    @staticmethod
    def _message(text: str, body: ChatCompletionRequest, finish: str | None) -> tuple[ResponseMessage, Any]:
        if body.tool_mode == "none":
            return ResponseMessage(content=text), finish
        content, calls = parse_calls(text, body.tool_names)
        if not calls:
            return ResponseMessage(content=text), finish
        tool_calls = [
            ResponseToolCall(id=new_id("call"), function=ToolCallFunction(name=c.name, arguments=c.arguments))
            for c in calls
        ]
        return ResponseMessage(content=content, tool_calls=tool_calls), "tool_calls"

    def _token(self, job: Job, token_id: int) -> tuple[str, list[int]]:
        text = job.loaded.engine.tokenizer.decode([token_id])  # type: ignore[attr-defined]
        return text, list(text.encode("utf-8"))

    def _chat_logprobs(self, job: Job, lps: list[TokenLogprob]) -> ChoiceLogprobs:
        content = []
        for lp in lps:
            token, raw = self._token(job, lp.token_id)
            top = []
            for tid, value in lp.top:
                t, b = self._token(job, tid)
                top.append(TopLogprob(token=t, logprob=value, bytes=b))
            content.append(TokenLogprobInfo(token=token, logprob=lp.logprob, bytes=raw, top_logprobs=top))
        return ChoiceLogprobs(content=content)

    def _completion_logprobs(
        self, job: Job, lps: list[TokenLogprob | None], k: int, first: int = 0
    ) -> CompletionLogprobs:
        """The legacy shape; ``text_offset`` counts characters of the token texts from the start
        (of the prompt with ``echo``), whose first token gets a null logprob."""
        tokens, values, tops, offsets, at = [], [], [], [], 0
        for lp in lps:
            if lp is None:  # the first prompt token: nothing to condition on
                continue
            token, _ = self._token(job, lp.token_id)
            tokens.append(token)
            values.append(lp.logprob)
            top = {self._token(job, tid)[0]: v for tid, v in lp.top[:k]}
            top.setdefault(token, lp.logprob)  # OpenAI includes the chosen token
            tops.append(top)
            offsets.append(at)
            at += len(token)
        if lps and lps[0] is None:  # echo: the first prompt token is listed with a null logprob
            head = self._token(job, first)[0]
            tokens.insert(0, head)
            values.insert(0, None)  # type: ignore[arg-type]
            tops.insert(0, None)  # type: ignore[arg-type]
            offsets = [0] + [o + len(head) for o in offsets]
        return CompletionLogprobs(text_offset=offsets, token_logprobs=values, tokens=tokens, top_logprobs=tops)

    def _prompt_text(self, job: Job, index: int) -> str:
        t = job.tickets[index]
        if t.request.prompt:
            return t.request.prompt
        return job.loaded.engine.tokenizer.decode(t.prompt_ids or [])  # type: ignore[attr-defined]

    async def _prompt_scores(self, job: Job, body: CompletionRequest) -> list[list[TokenLogprob | None]]:
        """Each ticket's prompt token log-probabilities (one forward pass per distinct prompt,
        run between two decode steps of the model's scheduler)."""
        engine, worker = job.loaded.engine, job.loaded.worker

        def score() -> list[list[TokenLogprob | None]]:
            cache: dict[tuple[int, ...], list[TokenLogprob | None]] = {}
            out = []
            for t in job.tickets:
                ids = tuple(t.prompt_ids or ())
                if ids not in cache:
                    with worker.exclusive():
                        cache[ids] = prompt_logprobs(engine, ids, body.logprobs or 0, t.request.adapter)
                out.append(cache[ids])
            return out

        return await asyncio.to_thread(score)

    # -- steps -------------------------------------------------------------------------------
    async def _start(self, body: ChatCompletionRequest | CompletionRequest, http: Request) -> Job:
        route = await self.pool.get(body.model, user=body.user, pin=http.headers.get(PIN_HEADER))
        loaded = route.loaded
        http.state.route = (body.model, route.version)  # metric labels for errors from here on
        requests = [
            replace(r, adapter=route.adapter)
            for r in body.to_requests(loaded.defaults, self.pool.config.max_tokens_cap)
        ]
        self._check_engine(loaded, requests)
        given = body.prompt_ids_of() if isinstance(body, CompletionRequest) else [None] * len(requests)
        prompts = [self._prompt_ids(loaded, r, ids) for r, ids in zip(requests, given, strict=True)]
        queue: asyncio.Queue = asyncio.Queue()
        sink = loop_sink(queue, asyncio.get_running_loop())
        tickets = [Ticket(r, p, i, sink) for i, (r, p) in enumerate(zip(requests, prompts, strict=True))]
        try:
            loaded.worker.submit(tickets)
        except Overloaded as exc:
            raise APIError(
                429,
                f"The server is at capacity for {body.model}; retry in {exc.retry_after} s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        return Job(
            loaded, route.version, body.model, tickets, queue,
            texts=[[] for _ in tickets], logprobs=[[] for _ in tickets],
        )  # fmt: skip

    @staticmethod
    def _check_engine(loaded: Loaded, requests: list[GenerationRequest]) -> None:
        """Structured output and logprobs need a local engine that exposes its logits."""
        local = getattr(loaded.engine, "name", "") in CONSTRAINED_ENGINES
        p = requests[0].params if requests else None
        if p is not None and not local and p.grammar is not None:
            raise APIError(400, f"{loaded.key} runs on the {loaded.engine.name} engine, which cannot enforce "
                           "response_format or a required tool call.", param="response_format")  # fmt: skip
        if p is not None and not local and p.logprobs is not None:
            raise APIError(400, f"{loaded.key} runs on the {loaded.engine.name} engine, which cannot return logprobs.",
                           param="logprobs")  # fmt: skip

    def _prompt_ids(self, loaded: Loaded, request: GenerationRequest, given: list[int] | None) -> list[int] | None:
        prompt_ids = getattr(loaded.engine, "prompt_ids", None)
        if given is not None:
            ids = given
            vocab = getattr(loaded.engine, "vocab_size", None) or len(getattr(loaded.engine, "tokenizer", ()) or ())
            if vocab and any(not 0 <= i < vocab for i in ids):
                raise APIError(400, f"The prompt has token ids outside the vocabulary (0..{vocab - 1}).",
                               param="prompt")  # fmt: skip
        elif prompt_ids is None:
            return None
        else:
            ids = prompt_ids(request)
        if not ids:
            chat = request.messages is not None
            raise APIError(
                400,
                "The messages are empty (0 tokens once templated); send some text."
                if chat
                else "The prompt is empty and this model has no BOS token to start from; send some text.",
                param="messages" if chat else "prompt",
                code="empty_prompt",
            )
        if loaded.context_length is not None and len(ids) >= loaded.context_length:
            raise APIError(
                400,
                f"The prompt is {len(ids)} tokens, but {loaded.key} has a context window of {loaded.context_length}; "
                "shorten the prompt.",
                param="messages" if request.messages is not None else "prompt",
                code="context_length_exceeded",
            )
        return ids

    async def _collect(self, job: Job, body: Any, http: Request) -> bool:
        """Wait for every choice; False when the client went away first (its tickets are cancelled)."""

        async def drain() -> None:
            async for _ in job.events():
                pass

        consume, watch = asyncio.create_task(drain()), asyncio.create_task(_disconnected(http))
        try:
            done, _ = await asyncio.wait({consume, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if consume not in done:
            consume.cancel()
            job.cancel()
            self.finish(job, body, CLIENT_CLOSED)
            return False
        try:
            consume.result()
        except APIError as exc:
            self.finish(job, body, exc.status)
            raise
        self.finish(job, body, 200)
        return True

    def _sse(self, job: Job, body: Any, http: Request, envelope: Callable[[list], Any]) -> StreamingResponse:
        chat = isinstance(body, ChatCompletionRequest)
        tools = chat and body.tool_mode != "none"  # answers are held until they parse as calls or not
        want_lps = chat and bool(body.logprobs) or (not chat and body.logprobs is not None)

        def piece(index: int, text: str | None, finish: str | None = None, role: bool = False, lps=()) -> Any:
            if chat:
                delta = Delta(content=text, role="assistant" if role else None)
                logprobs = self._chat_logprobs(job, list(lps)) if want_lps and lps else None
                return ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
            logprobs = self._completion_logprobs(job, list(lps), body.logprobs) if want_lps and lps else None
            return CompletionChoice(index=index, text=text or "", finish_reason=finish, logprobs=logprobs)

        def tool_pieces(index: int, finish: str | None) -> list[Any]:
            """OpenAI's tool-call stream: per call, a delta with id, type and name (empty arguments),
            then the arguments in pieces; the finish chunk says ``tool_calls``."""
            message, reason = self._message("".join(job.texts[index]), body, finish)
            if not message.tool_calls:
                lps = job.logprobs[index]
                return [piece(index, message.content, lps=lps), piece(index, None, finish)]
            out = []
            if message.content:
                out.append(piece(index, message.content))
            for n, call in enumerate(message.tool_calls):
                head = ToolCallDelta(
                    index=n, id=call.id, type="function", function=FunctionDelta(name=call.function.name, arguments="")
                )
                out.append(ChunkChoice(index=index, delta=Delta(tool_calls=[head])))
                args = call.function.arguments
                for start in range(0, len(args), 16):
                    part = ToolCallDelta(index=n, function=FunctionDelta(arguments=args[start : start + 16]))
                    out.append(ChunkChoice(index=index, delta=Delta(tool_calls=[part])))
            out.append(piece(index, None, reason))
            return out

        async def gen() -> AsyncIterator[str]:
            status = CLIENT_CLOSED
            try:
                if chat:
                    yield _data(envelope([piece(i, "", role=True) for i in range(len(job.tickets))]))
                async for index, ev in job.events():
                    if tools:
                        if ev.finish_reason is not None:
                            for p in tool_pieces(index, ev.finish_reason):
                                yield _data(envelope([p]))
                        continue
                    if ev.text or (want_lps and ev.logprobs):
                        yield _data(envelope([piece(index, ev.text, lps=ev.logprobs)]))
                    if ev.finish_reason is not None:
                        yield _data(envelope([piece(index, None if chat else "", ev.finish_reason)]))
                if body.include_usage:
                    final = envelope([])
                    final.usage = job.usage()
                    yield _data(final)
                yield "data: [DONE]\n\n"
                status = 200
            except APIError as exc:
                status = exc.status
                yield f"data: {json.dumps(exc.body())}\n\n"
            finally:
                if status != 200:
                    job.cancel()
                self.finish(job, body, status)

        return StreamingResponse(gen(), media_type="text/event-stream", headers=self._headers(job))

    def finish(self, job: Job, body: Any, status: int) -> None:
        """Metrics and the request log for a request that got as far as a scheduler."""
        now = time.perf_counter()
        usage = job.usage()
        ttft = job.first_token_at - job.started if job.first_token_at is not None else None
        model, version = job.public_model, job.version
        self.metrics.observe_request(
            model,
            version,
            status,
            seconds=now - job.started,
            ttft=ttft,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=job.generated,
        )
        if self.request_log is not None:
            entry = body.model_dump(exclude_none=True, include={"model", "messages", "prompt", "max_tokens", "seed"})
            self.request_log.write(
                {
                    "time": time.time(),
                    "status": status,
                    "version": version,
                    **entry,
                    "outputs": ["".join(t) for t in job.texts],
                    "usage": usage.model_dump(),
                    "latency_s": round(now - job.started, 4),
                    "ttft_s": None if ttft is None else round(ttft, 4),
                }
            )

    @staticmethod
    def _headers(job: Job) -> dict[str, str]:
        return {"x-slmops-model-version": job.version}


def _data(model: Any) -> str:
    return f"data: {model.model_dump_json()}\n\n"


async def _disconnected(http: Request) -> None:
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
