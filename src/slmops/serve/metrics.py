"""Prometheus metrics per model and version, in a registry of the app's own (so two apps in
one process, as in tests, never share counters)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from slmops.serve.scheduler import Worker

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LABELS = ("model", "version")


def split_version(key: str) -> tuple[str, str]:
    """``name:3`` → (``name``, ``name:3``); an adapter key keeps the base+adapter pair."""
    return key.split(":", 1)[0], key


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "slmops_requests", "Finished HTTP requests by model, version and status.", (*LABELS, "status"), registry=r
        )
        self.latency = Histogram(
            "slmops_request_latency_seconds", "Request latency.", LABELS, buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "slmops_time_to_first_token_seconds", "Time to first token.", LABELS, buckets=TTFT_BUCKETS, registry=r
        )
        self.generated = Counter("slmops_generated_tokens", "Generated (completion) tokens.", LABELS, registry=r)
        self.prompt = Counter("slmops_prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self.tokens_per_second = Gauge(
            "slmops_tokens_per_second", "Decode throughput of the model's batch (recent).", LABELS, registry=r
        )
        self.queue_depth = Gauge("slmops_queue_depth", "Requests waiting to join the batch.", LABELS, registry=r)
        self.batch_size = Gauge("slmops_batch_size", "Requests in the running batch.", LABELS, registry=r)
        self.prefix_hits = Gauge(
            "slmops_prefix_cache_hits", "Prompts that reused cached prefix KV (since the model loaded).", LABELS,
            registry=r,
        )
        self.prefix_misses = Gauge(
            "slmops_prefix_cache_misses", "Prompts with no cached prefix (since the model loaded).", LABELS, registry=r
        )
        self.prefix_tokens = Gauge(
            "slmops_prefix_cache_hit_tokens", "Prompt tokens not prefilled thanks to the prefix cache.", LABELS,
            registry=r,
        )
        self.prefix_bytes = Gauge("slmops_prefix_cache_bytes", "Memory held by the prefix cache.", LABELS, registry=r)
        self.model_memory = Gauge(
            "slmops_model_memory_bytes", "Weights and buffers of a loaded model in memory.", LABELS, registry=r
        )
        self.loaded_models = Gauge("slmops_loaded_models", "Models loaded in memory.", registry=r)
        self.resident_memory = Gauge("slmops_resident_memory_bytes", "Resident memory of the server.", registry=r)
        proc = psutil.Process(os.getpid())
        self.resident_memory.set_function(lambda: proc.memory_info().rss)
        self._tps_window: dict[str, tuple[float, int]] = {}
        self.listeners: list[Callable[..., None]] = []  # called with observe_request's arguments

    def observe_request(
        self,
        model: str,
        version: str,
        status: int | str,
        *,
        seconds: float | None = None,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.requests.labels(model, version, str(status)).inc()
        for listener in self.listeners:  # e.g. the fleet agent's telemetry window
            listener(model, version, status, seconds=seconds, ttft=ttft, completion_tokens=completion_tokens)
        if seconds is not None:
            self.latency.labels(model, version).observe(seconds)
        if ttft is not None:
            self.ttft.labels(model, version).observe(ttft)
        if prompt_tokens:
            self.prompt.labels(model, version).inc(prompt_tokens)
        if completion_tokens:
            self.generated.labels(model, version).inc(completion_tokens)

    def watch(self, worker: Worker, memory_bytes: int = 0) -> None:
        """Keep a worker's queue depth, batch size and throughput gauges current."""
        labels = split_version(worker.name)
        self.model_memory.labels(*labels).set(memory_bytes)
        depth, size, tps = (g.labels(*labels) for g in (self.queue_depth, self.batch_size, self.tokens_per_second))

        def on_step(w: Worker) -> None:
            depth.set(w.queue_depth)
            size.set(w.running)
            now = time.perf_counter()
            since, tokens = self._tps_window.get(w.name, (now, w.stats.tokens))
            if now - since >= 1.0:
                tps.set((w.stats.tokens - tokens) / (now - since))
                self._tps_window[w.name] = (now, w.stats.tokens)
            elif w.name not in self._tps_window:
                self._tps_window[w.name] = (since, tokens)

        worker.stats.on_step = on_step

    def forget(self, key: str) -> None:
        for g in (self.queue_depth, self.batch_size, self.tokens_per_second, self.model_memory):
            g.labels(*split_version(key)).set(0)

    def render(self, workers: list[Worker]) -> bytes:
        self.loaded_models.set(len(workers))
        for w in workers:
            self.queue_depth.labels(*split_version(w.name)).set(w.queue_depth)
            self.batch_size.labels(*split_version(w.name)).set(w.running)
            cache = getattr(w.engine, "prefix_cache", None)
            if cache is not None:
                labels = split_version(w.name)
                self.prefix_hits.labels(*labels).set(cache.stats.hits)
                self.prefix_misses.labels(*labels).set(cache.stats.misses)
                self.prefix_tokens.labels(*labels).set(cache.stats.hit_tokens)
                self.prefix_bytes.labels(*labels).set(cache.bytes)
        return generate_latest(self.registry)
