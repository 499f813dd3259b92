"""Live serving figures from the ``/metrics`` of ``slmops serve`` endpoints.

A scrape is a :class:`Snapshot` of the Prometheus counters, histograms and gauges per model
version. Rates and quantiles come from the difference between the newest snapshot and one
taken up to ``window_s`` earlier (as Prometheus' ``rate()`` and ``histogram_quantile()`` do),
so every browser tab polling the same endpoint sees the same figures.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from slmops.errors import SlmopsError

Buckets = dict[float, float]  # upper bound -> cumulative count


@dataclass
class VersionStats:
    requests: dict[str, float] = field(default_factory=dict)  # status -> count
    latency: Buckets = field(default_factory=dict)
    ttft: Buckets = field(default_factory=dict)
    generated: float = 0.0
    tokens_per_second: float = 0.0
    queue_depth: float = 0.0
    batch_size: float = 0.0
    memory_bytes: float | None = None


@dataclass
class Snapshot:
    t: float
    versions: dict[str, VersionStats]
    resident_memory_bytes: float | None = None


def endpoint_base(url: str) -> str:
    """``http://h:p/v1`` or ``http://h:p/`` → ``http://h:p`` (the server root)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SlmopsError(f"Serve endpoint {url!r} is not an http(s) URL.", "Pass e.g. --serve http://127.0.0.1:8000.")
    return url.removesuffix("/v1")


def parse_metrics(text: str, t: float | None = None) -> Snapshot:
    """One scrape of a ``slmops serve`` ``/metrics`` page."""
    versions: dict[str, VersionStats] = {}
    rss: float | None = None

    def stats(labels: dict[str, str]) -> VersionStats:
        key = labels.get("version") or labels.get("model") or "(unrouted)"
        return versions.setdefault(key, VersionStats())

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "slmops_requests_total":
                st = stats(labels)
                st.requests[labels.get("status", "")] = st.requests.get(labels.get("status", ""), 0.0) + value
            elif name in ("slmops_request_latency_seconds_bucket", "slmops_time_to_first_token_seconds_bucket"):
                target = stats(labels).latency if "latency" in name else stats(labels).ttft
                target[float(labels["le"])] = value
            elif name == "slmops_generated_tokens_total":
                stats(labels).generated = value
            elif name == "slmops_tokens_per_second":
                stats(labels).tokens_per_second = value
            elif name == "slmops_queue_depth":
                stats(labels).queue_depth = value
            elif name == "slmops_batch_size":
                stats(labels).batch_size = value
            elif name == "slmops_model_memory_bytes":
                stats(labels).memory_bytes = value
            elif name == "slmops_resident_memory_bytes":
                rss = value
    return Snapshot(time.time() if t is None else t, versions, rss)


def quantile(q: float, buckets: Buckets) -> float | None:
    """Linear interpolation inside the bucket holding the q-th observation (``histogram_quantile``)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: report that bound
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = upper, count
    return lower


def _delta(new: Buckets, old: Buckets) -> Buckets:
    return {k: max(0.0, v - old.get(k, 0.0)) for k, v in new.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def derive(new: Snapshot, old: Snapshot | None) -> dict[str, Any]:
    """Per version: requests/s, error rate (% of requests not 2xx), p50/p95 latency and time to
    first token (ms), tokens/s, queue depth, batch size and memory (MB) over ``new.t - old.t``."""
    dt = new.t - old.t if old is not None else 0.0
    out: dict[str, Any] = {}
    for key, st in sorted(new.versions.items()):
        prev = old.versions.get(key, VersionStats()) if old is not None else None
        row: dict[str, Any] = {"queue_depth": st.queue_depth, "batch_size": st.batch_size,
                               "memory_mb": None if st.memory_bytes is None else round(st.memory_bytes / 2**20, 1),
                               "requests_total": sum(st.requests.values())}
        if prev is not None and dt > 0:
            done = sum(st.requests.values()) - sum(prev.requests.values())
            failed = sum(v - prev.requests.get(s, 0.0) for s, v in st.requests.items() if not s.startswith("2"))
            lat, ttft = _delta(st.latency, prev.latency), _delta(st.ttft, prev.ttft)
            row.update(
                requests_per_second=round(done / dt, 3),
                error_rate_pct=round(100 * failed / done, 2) if done > 0 else 0.0,
                latency_p50_ms=_ms(quantile(0.5, lat)),
                latency_p95_ms=_ms(quantile(0.95, lat)),
                ttft_p50_ms=_ms(quantile(0.5, ttft)),
                ttft_p95_ms=_ms(quantile(0.95, ttft)),
                tokens_per_second=round(max(0.0, st.generated - prev.generated) / dt, 2),
            )
        out[key] = row
    return out


class EndpointMonitor:
    """One ``slmops serve`` endpoint: scrapes ``/metrics``, keeps recent snapshots, reads and
    re-weights canary routes (``/admin/routes``) with the server's API key."""

    def __init__(self, url: str, api_key: str | None = None, window_s: float = 5.0, timeout_s: float = 3.0) -> None:
        self.url = endpoint_base(url)
        self.api_key = api_key
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.history: deque[Snapshot] = deque(maxlen=512)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _base_for(self, now: float) -> Snapshot | None:
        """The oldest snapshot inside the window that is at least 0.2 s old."""
        for snap in self.history:
            if now - snap.t <= self.window_s and now - snap.t >= 0.2:
                return snap
        older = [s for s in self.history if now - s.t >= 0.2]
        return older[-1] if older else None

    async def sample(self) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.get(self.url + "/metrics", headers=self._headers())
        except httpx.HTTPError as exc:
            return {"t": time.time(), "ok": False, "error": f"{self.url} unreachable ({type(exc).__name__})"}
        if resp.status_code != 200:
            return {"t": time.time(), "ok": False, "error": f"{self.url}/metrics answered {resp.status_code}"}
        snap = parse_metrics(resp.text)
        base = self._base_for(snap.t)
        self.history.append(snap)
        while self.history and snap.t - self.history[0].t > 4 * self.window_s:
            self.history.popleft()
        rss = snap.resident_memory_bytes
        return {"t": snap.t, "ok": True, "window_s": round(snap.t - base.t, 2) if base else None,
                "server_memory_mb": None if rss is None else round(rss / 2**20, 1),
                "versions": derive(snap, base)}

    async def loaded(self) -> list[str]:
        """The model keys the server has in memory (``/health``; empty when it does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                resp = await client.get(self.url + "/health")
            return [str(k) for k in resp.json().get("loaded", [])] if resp.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []

    async def routes(self) -> tuple[dict[str, dict[str, float]] | None, str | None]:
        """(routes, why not): the canary routes, or ``None`` and the reason they cannot be read."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.get(self.url + "/admin/routes", headers=self._headers())
        except httpx.HTTPError as exc:
            return None, f"unreachable ({type(exc).__name__})"
        if resp.status_code == 200:
            return resp.json(), None
        return None, _server_message(resp)

    async def set_route(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            resp = await client.put(f"{self.url}/admin/routes/{name}", json={"weights": weights},
                                    headers=self._headers())
        if resp.status_code != 200:
            raise SlmopsError(f"The server refused the new weights: {_server_message(resp)}")
        return resp.json()[name]


def _server_message(resp: httpx.Response) -> str:
    try:
        return f"{resp.status_code}: {resp.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{resp.status_code}"
