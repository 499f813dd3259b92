"""One scheduler thread per loaded model: continuous batching behind two queues.

HTTP handlers and the inference loop meet only at queues (as in llama.cpp's server): a
handler puts :class:`Ticket` objects on the worker's bounded waiting queue (or gets
:class:`Overloaded` before any response starts) and reads events from the ticket's asyncio
queue; the worker thread moves waiting tickets into the running batch at step boundaries,
runs one step, and posts each row's events back to its ticket's event loop. A cancelled
ticket (client gone) leaves the batch at the next step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmops.engines.base import Engine, GenerationRequest
from slmops.engines.batching import BatchEvent, StreamBatch
from slmops.errors import SlmopsError

log = logging.getLogger("slmops.serve")


class Overloaded(Exception):
    """The waiting queue is full; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server overloaded, retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    """One generation (one choice) travelling between a handler and a worker."""

    request: GenerationRequest
    prompt_ids: list[int] | None
    index: int  # the choice index within its HTTP request
    sink: Callable[[int, BatchEvent | Exception], None]  # called on the worker thread
    rid: int | None = None
    cancelled: bool = False
    finished: bool = False


def loop_sink(queue: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> Callable[[int, Any], None]:
    """A sink that hands events to an asyncio queue on ``loop`` (safe from any thread)."""

    def put(index: int, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, (index, item))

    return put


@dataclass
class WorkerStats:
    steps: int = 0
    tokens: int = 0
    max_running: int = 0
    seconds_per_request: float = 1.0  # moving average, for Retry-After
    on_step: Callable[[Worker], None] | None = field(default=None, repr=False)


class Worker:
    """The scheduler of one loaded model."""

    def __init__(self, engine: Engine, *, name: str, max_batch_size: int = 8, max_queue: int = 64) -> None:
        self.engine, self.name = engine, name
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        new_batch = getattr(engine, "new_batch", None)
        self.batch = new_batch() if new_batch else StreamBatch(engine)
        self.stats = WorkerStats()
        self._waiting: deque[Ticket] = deque()
        self._cancels: list[Ticket] = []
        self._active: dict[int, Ticket] = {}
        self._started: dict[int, float] = {}
        self._cond = threading.Condition()
        self._stepping = threading.Lock()  # held while the batch changes; see :meth:`exclusive`
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{name}", daemon=True)
        self._thread.start()

    # -- handler side (any thread) ------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._active)

    def submit(self, tickets: list[Ticket]) -> None:
        """Queue all tickets or none; raises :class:`Overloaded` when the queue is full."""
        with self._cond:
            if self._stop:
                raise SlmopsError(f"The model {self.name} is being unloaded.", "Retry the request.")
            if len(self._waiting) + len(tickets) > self.max_queue:
                waves = (len(self._waiting) + len(tickets)) / max(self.max_batch_size, 1)
                raise Overloaded(min(60, max(1, math.ceil(waves * self.stats.seconds_per_request))))
            self._waiting.extend(tickets)
            self._cond.notify()

    def cancel(self, tickets: list[Ticket]) -> None:
        with self._cond:
            for t in tickets:
                if not t.finished and not t.cancelled:
                    t.cancelled = True
                    self._cancels.append(t)
            self._cond.notify()

    def exclusive(self) -> threading.Lock:
        """``with worker.exclusive(): ...`` runs between two steps: no forward pass meanwhile
        (the pool loads another adapter into a running engine this way)."""
        return self._stepping

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the inference loop (worker thread) ---------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._waiting or self._cancels or self.batch):
                    self._cond.wait()
                if self._stop:
                    break
                room = self.max_batch_size - len(self.batch)
                admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                cancels, self._cancels = self._cancels, []
            with self._stepping:
                for t in cancels:
                    if t.rid is not None and self._active.pop(t.rid, None) is not None:
                        self._started.pop(t.rid, None)
                        self.batch.cancel(t.rid)
                for t in admit:
                    if not t.cancelled:
                        self._admit(t)
                self._step()
        for t in [*self._active.values(), *self._waiting]:
            t.sink(t.index, SlmopsError(f"The model {self.name} was unloaded."))

    def _admit(self, t: Ticket) -> None:
        try:
            t.rid = self.batch.add(t.request, t.prompt_ids)
        except SlmopsError as exc:
            t.finished = True
            t.sink(t.index, exc)
            return
        self._active[t.rid] = t
        self._started[t.rid] = time.perf_counter()

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as exc:  # a bug or OOM: fail the running requests, keep serving
            log.exception("decode step failed on %s", self.name)
            for rid, t in list(self._active.items()):
                self.batch.cancel(rid)
                t.finished = True
                t.sink(t.index, exc)
            self._active.clear()
            self.batch.step()  # applies the cancellations
            return
        self.stats.steps += 1
        self.stats.tokens += len(events)
        self.stats.max_running = max(self.stats.max_running, len(events))
        for ev in events:
            t = self._active.get(ev.id)
            if t is None:
                continue
            if ev.finish_reason is not None:
                t.finished = True
                del self._active[ev.id]
                took = time.perf_counter() - self._started.pop(ev.id, time.perf_counter())
                self.stats.seconds_per_request = 0.8 * self.stats.seconds_per_request + 0.2 * took
            t.sink(t.index, ev)
        if self.stats.on_step is not None:
            self.stats.on_step(self)
