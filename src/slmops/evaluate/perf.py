"""Performance measurements: per-request latency, throughput and peak resident memory.

How the numbers are taken (and what they mean):

* **Throughput** (``tokens_per_second``): completion tokens of the whole batched run over its
  wall time, at the run's ``batch_size``, the way the test set was actually answered. One
  untimed one-token request runs first, so lazy initialisation is not billed to the run.
* **Latency** (``latency_p50_ms``/``latency_p95_ms``): after the batched run (so the model is
  warm), the first ``latency_samples`` records are sent again **one at a time** through
  ``engine.stream``; each request is timed from the call to its last chunk, which is what a
  single user waits. ``ttft_p50_ms`` is the time to the first non-empty chunk and
  ``decode_tokens_per_second`` the single-stream decode rate after it. Batched timings are
  never divided up to pose as per-request latency.
* **Memory**: a background thread samples this process's resident set (psutil) every 10 ms
  from just before the model loads until its run ends. ``peak_rss_mb`` is the highest sample,
  ``memory_delta_mb`` the peak minus the resident set before loading (the model's cost).
  A remote engine's memory lives in another process, so it is not reported for URLs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psutil

from slmops.engines.base import Engine, GenerationRequest

MB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); ``None`` for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so
    the next model's memory delta does not start from the previous model's leftovers."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssSampler:
    """Peak resident set size of this process between ``start`` and ``stop``."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.before = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def start(self) -> RssSampler:
        self.before = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self._stop.set()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Latency:
    samples: int
    p50_ms: float | None
    p95_ms: float | None
    ttft_p50_ms: float | None
    decode_tokens_per_second: float | None


def measure_latency(engine: Engine, requests: Sequence[GenerationRequest]) -> Latency:
    """Send each request alone through ``engine.stream`` and time it (see module notes)."""
    totals: list[float] = []
    ttfts: list[float] = []
    decode_rates: list[float] = []
    for req in requests:
        t0 = time.perf_counter()
        first: float | None = None
        tokens = 0
        for chunk in engine.stream(req):
            if chunk.text and first is None:
                first = time.perf_counter() - t0
            if chunk.finish_reason is not None:
                tokens = chunk.completion_tokens
        total = time.perf_counter() - t0
        totals.append(total * 1000)
        if first is not None:
            ttfts.append(first * 1000)
            if tokens > 1 and total > first:
                decode_rates.append((tokens - 1) / (total - first))
    return Latency(
        samples=len(totals),
        p50_ms=percentile(totals, 50),
        p95_ms=percentile(totals, 95),
        ttft_p50_ms=percentile(ttfts, 50),
        decode_tokens_per_second=float(np.median(decode_rates)) if decode_rates else None,
    )


@dataclass(frozen=True)
class PerfStats:
    load_seconds: float
    batch_size: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    generation_seconds: float
    tokens_per_second: float
    latency_samples: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    decode_tokens_per_second: float | None
    rss_before_mb: float | None
    peak_rss_mb: float | None
    memory_delta_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}
