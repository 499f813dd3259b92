"""``run_bench(config) -> BenchReport``: load-test an OpenAI-compatible server.

Reads top to bottom: open the target (a URL, or a store reference served by a child process),
warm it up, then for each concurrency level run that many clients, each sending
``requests_per_client`` streaming chat requests (fixed prompts, fixed ``max_tokens``, greedy)
one after another, and measure per request the time to first token, the gaps between
streamed tokens and the latency; per level the aggregate tokens/s, latency percentiles and,
when we started the server, its peak resident memory and mean CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import Field, field_validator

from slmops.configs import CommandConfig
from slmops.errors import SlmopsError
from slmops.evaluate.perf import MB, percentile
from slmops.models.store import ModelStore
from slmops.ops.target import ProcessMonitor, ServerOptions, Target, open_target

Progress = Callable[[str], None]

PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a short note reminding the team about Friday's meeting.",
    "List three tips for writing clear emails.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Give me a recipe idea that uses rice and spinach.",
    "How do I reset a forgotten password on most websites?",
    "Describe a cat to someone who has never seen one.",
)


class BenchConfig(CommandConfig):
    """Everything one benchmark needs; field = CLI flag = Python argument."""

    what: ClassVar[str] = "benchmark settings"
    example: ClassVar[str] = "Example: slmops bench smollm2-135m-instruct --concurrency 1,4 --max-tokens 32."

    target: str = Field(description="A store reference (served here on a free local port) or a server URL: "
                                    "http://host:port/v1[#model].")
    concurrency: tuple[int, ...] = Field((1, 2, 4, 8, 16), description="Concurrent clients per level.")
    requests_per_client: int = Field(2, ge=1, description="Streaming requests each client sends per level, "
                                                          "one after another.")
    max_tokens: int = Field(64, ge=1, description="max_tokens of every request.")
    prompts: tuple[str, ...] = Field(PROMPTS, description="The fixed prompts, sent in turn.")
    warmup: int = Field(2, ge=0, description="Requests sent before measuring.")
    model: str | None = Field(None, description="The 'model' field to send to a URL target (default: after '#', "
                                                "else the server's first).")
    api_key: str | None = Field(None, description="Bearer key for a URL target (env SLMOPS_API_KEY).")
    timeout_s: float = Field(600.0, gt=0, description="Seconds one request may take.")
    max_batch_size: int = Field(16, ge=1, description="Batch size of the server started for a store reference.")
    threads: int | None = Field(None, description="CPU threads for inference (default: all cores).")
    output: str | None = Field(None, description="Write bench.json, bench.md and bench.svg (tokens/s chart) here.")

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if not levels or any(c < 1 for c in levels):
            raise ValueError(f"levels must be >= 1 (got {','.join(map(str, levels)) or 'none'})")
        return levels

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, prompts: tuple[str, ...]) -> tuple[str, ...]:
        if not prompts or not all(x.strip() for x in prompts):
            raise ValueError("must be non-empty strings")
        return prompts


def parse_levels(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, with a clear error for anything else."""
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        levels = ()
    if not levels or any(c < 1 for c in levels):
        raise SlmopsError(f"--concurrency {text!r} is not a list of positive integers.", "Write e.g. 1,2,4,8.")
    return levels


# -- one streaming request --------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    status: int
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0
    gaps_s: tuple[float, ...] = ()  # between consecutive streamed pieces
    text: str = ""
    error: str | None = None
    prompt_tokens: int | None = None  # from the response's usage, when the server reports it


def chat_body(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, **extra}  # fmt: skip


async def stream_chat(client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> Sample:
    """One streaming chat completion; a transport failure is a sample with status 0."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=target.headers) as r:
            if r.status_code != 200:
                await r.aread()
                return Sample(r.status_code, time.perf_counter() - t0, error=r.text[:200])
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Sample(500, time.perf_counter() - t0, error=str(chunk["error"])[:200])
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                    prompt_tokens = chunk["usage"].get("prompt_tokens")
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        stamps.append(time.perf_counter())
                        pieces.append(text)
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    gaps = tuple(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return Sample(200, time.perf_counter() - t0, stamps[0] - t0 if stamps else None,
                  usage_tokens if usage_tokens is not None else len(stamps), gaps, "".join(pieces),
                  prompt_tokens=prompt_tokens)  # fmt: skip


def async_client(target: Target, concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(base_url=target.url, timeout=timeout_s, limits=limits)


async def run_clients(
    target: Target, bodies: Sequence[dict[str, Any]], concurrency: int, timeout_s: float
) -> tuple[list[Sample], float]:
    """Send ``bodies`` through ``concurrency`` clients (each takes the next body when it is
    done with one); returns the samples in body order and the wall time."""
    results: list[Sample | None] = [None] * len(bodies)
    cursor = iter(range(len(bodies)))
    async with async_client(target, concurrency, timeout_s) as client:

        async def worker() -> None:
            for i in cursor:
                results[i] = await stream_chat(client, target, bodies[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return [r for r in results if r is not None], wall


# -- the sweep --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int
    tokens_per_second: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    server_peak_rss_mb: float | None = None
    server_cpu_percent: float | None = None


def summarize(concurrency: int, samples: Sequence[Sample], wall_s: float,
              monitor: ProcessMonitor | None = None) -> LevelResult:  # fmt: skip
    ok = [s for s in samples if s.status == 200]
    tokens = sum(s.tokens for s in ok)
    ms = [1000 * s.latency_s for s in ok]
    ttft = [1000 * s.ttft_s for s in ok if s.ttft_s is not None]
    gaps = [1000 * g for s in ok for g in s.gaps_s]
    return LevelResult(
        concurrency=concurrency, requests=len(samples), errors=len(samples) - len(ok), wall_s=round(wall_s, 3),
        completion_tokens=tokens, tokens_per_second=round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        ttft_p50_ms=_r(percentile(ttft, 50)), ttft_p95_ms=_r(percentile(ttft, 95)),
        itl_p50_ms=_r(percentile(gaps, 50)), itl_p95_ms=_r(percentile(gaps, 95)),
        latency_p50_ms=_r(percentile(ms, 50)), latency_p95_ms=_r(percentile(ms, 95)),
        latency_p99_ms=_r(percentile(ms, 99)),
        server_peak_rss_mb=round(monitor.peak_rss / MB, 1) if monitor else None,
        server_cpu_percent=round(monitor.cpu_percent, 1) if monitor else None,
    )  # fmt: skip


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class BenchReport:
    target: str
    model: str
    served_by_us: bool
    config: dict[str, Any]
    levels: list[LevelResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, **asdict(self)}

    def markdown(self) -> str:
        head = ["concurrency", "requests", "errors", "tokens/s", "TTFT p50 ms", "ITL p50 ms", "latency p50 ms",
                "p95 ms", "p99 ms", "server peak RSS MB", "server CPU %"]  # fmt: skip
        rows = [[lv.concurrency, lv.requests, lv.errors, lv.tokens_per_second, lv.ttft_p50_ms, lv.itl_p50_ms,
                 lv.latency_p50_ms, lv.latency_p95_ms, lv.latency_p99_ms, lv.server_peak_rss_mb,
                 lv.server_cpu_percent] for lv in self.levels]  # fmt: skip
        lines = [f"# slmops bench: {self.model}", "",
                 f"Target {self.target}; {self.config['max_tokens']} max tokens, "
                 f"{self.config['requests_per_client']} requests per client; {self.created_at}.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def svg(self) -> str:
        from slmops.evaluate import svg

        points = [svg.Point(f"c={lv.concurrency}", lv.concurrency, lv.tokens_per_second) for lv in self.levels]
        return svg.scatter(points, "concurrent clients", "aggregate tokens/s")

    def write(self, out_dir: Path) -> BenchReport:
        """bench.json, bench.md and bench.svg in ``out_dir``, each written atomically."""
        from slmops.evaluate.report import write_atomic

        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {kind: str(out_dir / f"bench.{kind}") for kind in ("json", "md", "svg")}
        write_atomic(out_dir / "bench.md", self.markdown())
        write_atomic(out_dir / "bench.svg", self.svg())
        write_atomic(out_dir / "bench.json", json.dumps(self.to_dict(), indent=2) + "\n")
        return self


def run_bench(config: BenchConfig, *, store: ModelStore | None = None, progress: Progress | None = None) -> BenchReport:
    say = progress or (lambda _m: None)
    options = ServerOptions(max_batch_size=config.max_batch_size, max_queue=max(64, 2 * max(config.concurrency)),
                            threads=config.threads)  # fmt: skip
    with open_target(config.target, store, model=config.model, api_key=config.api_key, options=options,
                     progress=say) as target:  # fmt: skip
        levels = asyncio.run(_sweep(config, target, say))
        report = BenchReport(config.target, target.model, target.process is not None,
                             {**config.model_dump(), "api_key": None}, levels)  # fmt: skip
    if config.output:
        report.write(Path(config.output))
    return report


async def _sweep(config: BenchConfig, target: Target, say: Progress) -> list[LevelResult]:
    def bodies(n: int) -> list[dict[str, Any]]:
        return [chat_body(target.model, config.prompts[i % len(config.prompts)], config.max_tokens) for i in range(n)]

    if config.warmup:
        say(f"warming up with {config.warmup} requests")
        warm, _ = await run_clients(target, bodies(config.warmup), 1, config.timeout_s)
        failed = [s for s in warm if s.status != 200]
        if failed:
            raise SlmopsError(
                f"The warm-up request to {target.url} failed with status {failed[0].status}: {failed[0].error}",
                "Check the target URL, the model name and the API key.",
            )
    levels = []
    for c in config.concurrency:
        say(f"concurrency {c}: {c * config.requests_per_client} requests")
        monitor = ProcessMonitor(target.process) if target.process is not None else None
        with monitor or contextlib.nullcontext():
            samples, wall = await run_clients(target, bodies(c * config.requests_per_client), c, config.timeout_s)
        levels.append(summarize(c, samples, wall, monitor))
    return levels

