"""Several OpenAI-compatible endpoints behind one engine: teacher fan-out.

``FanoutEngine`` holds one engine per endpoint (normally a :class:`RemoteEngine` each) and
spreads the requests of a ``generate`` call over them: every endpoint runs up to
``per_endpoint`` requests at once, pulling the next one from a shared queue, so a fast endpoint
takes more of the work. A request that fails on an endpoint (after that engine's own retries) is
put back and taken by another endpoint; an endpoint that failed is skipped for ``cooldown``
seconds. The call fails only when a request has failed on every endpoint. Results are in
request order, one per request, so a caller's journal still sees every input exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from slmops.engines.base import Engine, GenerationRequest, GenerationResult, StreamChunk
from slmops.errors import EngineError, SlmopsError


@dataclass
class EndpointStats:
    name: str
    ok: int = 0
    failed: int = 0
    down_until: float = 0.0
    last_error: str = ""


@dataclass
class _Job:
    index: int
    request: GenerationRequest
    tried: set[int] = field(default_factory=set)


def split_endpoints(teacher: str) -> list[str]:
    """``URL1#model,URL2#model`` -> the endpoints (one URL is a list of one)."""
    return [p.strip() for p in teacher.split(",") if p.strip()]


class FanoutEngine(Engine):
    name = "fanout"

    def __init__(self, engines: Sequence[Engine], names: Sequence[str], *, per_endpoint: int = 4,
                 cooldown: float = 5.0) -> None:
        if not engines:
            raise EngineError("A fan-out needs at least one endpoint.")
        if per_endpoint < 1:
            raise EngineError(f"per_endpoint must be >= 1 (got {per_endpoint}).")
        self.engines = list(engines)
        self.stats = [EndpointStats(n) for n in names]
        self.per_endpoint, self.cooldown = per_endpoint, cooldown

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        queue = deque(_Job(i, r) for i, r in enumerate(requests))
        results: list[GenerationResult | None] = [None] * len(requests)
        failure: list[SlmopsError] = []
        cond = threading.Condition()
        busy = [0]

        def take(endpoint: int) -> _Job | None:
            with cond:
                while True:
                    if failure or (not queue and not busy[0]):
                        return None
                    job = next((j for j in queue if endpoint not in j.tried), None)
                    if job is not None and time.monotonic() >= self.stats[endpoint].down_until:
                        queue.remove(job)
                        busy[0] += 1
                        return job
                    if not queue and busy[0] == 0:
                        return None
                    cond.wait(0.05)

        def work(endpoint: int) -> None:
            while (job := take(endpoint)) is not None:
                try:
                    result = self.engines[endpoint].generate([job.request])[0]
                except SlmopsError as exc:
                    with cond:
                        st = self.stats[endpoint]
                        st.failed, st.last_error = st.failed + 1, str(exc)
                        st.down_until = time.monotonic() + self.cooldown
                        job.tried.add(endpoint)
                        if len(job.tried) == len(self.engines):
                            failure.append(exc)
                        else:
                            queue.appendleft(job)
                        busy[0] -= 1
                        cond.notify_all()
                    continue
                with cond:
                    results[job.index] = result
                    self.stats[endpoint].ok += 1
                    busy[0] -= 1
                    cond.notify_all()

        threads = [threading.Thread(target=work, args=(e,), daemon=True, name=f"fanout-{e}-{k}")
                   for e in range(len(self.engines)) for k in range(self.per_endpoint)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failure:
            names = ", ".join(f"{s.name} ({s.last_error})" for s in self.stats if s.last_error)
            raise EngineError(f"A request failed on every teacher endpoint: {names}.") from failure[0]
        return results  # type: ignore[return-value]

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        result = self.generate([request])[0]
        if result.text:
            yield StreamChunk(result.text)
        yield StreamChunk("", finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
                          completion_tokens=result.completion_tokens)

    def count_tokens(self, request: GenerationRequest) -> int:
        return self.engines[0].count_tokens(request)

    def close(self) -> None:
        for e in self.engines:
            e.close()
