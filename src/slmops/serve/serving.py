"""Serving: one HTTP request → tickets on a model's scheduler → an OpenAI response or SSE stream.

Everything that can fail (unknown model, prompt too long, queue full) fails here, before a
stream opens, so the client sees a real status code. A client that disconnects cancels its
tickets, which leave the running batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmops.engines.base import GenerationRequest
from slmops.engines.batching import BatchEvent
from slmops.serve.canary import PIN_HEADER
from slmops.serve.metrics import ServeMetrics
from slmops.serve.pool import Loaded, ModelPool
from slmops.serve.protocol import (
    APIError,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ResponseMessage,
    Usage,
    new_id,
)
from slmops.serve.reqlog import RequestLog
from slmops.serve.scheduler import Overloaded, Ticket, loop_sink

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"


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
        job = await self._start(body, http)
        rid = new_id("chatcmpl")
        if body.stream:
            return self._sse(job, body, http, lambda c: ChatCompletionChunk(id=rid, model=body.model, choices=c))
        if not await self._collect(job, body, http):
            return Response(status_code=CLIENT_CLOSED)
        choices = [
            ChatChoice(index=i, message=ResponseMessage(content="".join(t)), finish_reason=job.finals[i].finish_reason)
            for i, t in enumerate(job.texts)
        ]
        resp = ChatCompletionResponse(id=rid, model=body.model, choices=choices, usage=job.usage())
        return JSONResponse(resp.model_dump(), headers=self._headers(job))

    async def completion(self, body: CompletionRequest, http: Request) -> Any:
        job = await self._start(body, http)
        rid = new_id("cmpl")
        if body.stream:
            return self._sse(job, body, http, lambda c: CompletionResponse(id=rid, model=body.model, choices=c))
        if not await self._collect(job, body, http):
            return Response(status_code=CLIENT_CLOSED)
        choices = [
            CompletionChoice(index=i, text="".join(t), finish_reason=job.finals[i].finish_reason)
            for i, t in enumerate(job.texts)
        ]
        resp = CompletionResponse(id=rid, model=body.model, choices=choices, usage=job.usage())
        return JSONResponse(resp.model_dump(), headers=self._headers(job))

    # -- steps -------------------------------------------------------------------------------
    async def _start(self, body: ChatCompletionRequest | CompletionRequest, http: Request) -> Job:
        route = await self.pool.get(body.model, user=body.user, pin=http.headers.get(PIN_HEADER))
        loaded = route.loaded
        http.state.route = (body.model, route.version)  # metric labels for errors from here on
        requests = [
            replace(r, adapter=route.adapter)
            for r in body.to_requests(loaded.defaults, self.pool.config.max_tokens_cap)
        ]
        prompts = [self._prompt_ids(loaded, r) for r in requests]
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
        return Job(loaded, route.version, body.model, tickets, queue, texts=[[] for _ in tickets])

    def _prompt_ids(self, loaded: Loaded, request: GenerationRequest) -> list[int] | None:
        prompt_ids = getattr(loaded.engine, "prompt_ids", None)
        if prompt_ids is None:
            return None
        ids = prompt_ids(request)
        if not ids:
            raise APIError(
                400,
                "The prompt is empty (0 tokens once templated); send some text.",
                param="prompt",
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

        def piece(index: int, text: str | None, finish: str | None = None, role: bool = False) -> Any:
            if chat:
                delta = Delta(content=text, role="assistant" if role else None)
                return ChunkChoice(index=index, delta=delta, finish_reason=finish)
            return CompletionChoice(index=index, text=text or "", finish_reason=finish)

        async def gen() -> AsyncIterator[str]:
            status = CLIENT_CLOSED
            try:
                if chat:
                    yield _data(envelope([piece(i, "", role=True) for i in range(len(job.tickets))]))
                async for index, ev in job.events():
                    if ev.text:
                        yield _data(envelope([piece(index, ev.text)]))
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
