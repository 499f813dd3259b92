"""What ``slmops bench`` and ``slmops validate`` talk to: a URL of any OpenAI-compatible server,
or a store reference that we serve ourselves in a child process (so the server's own resident
memory and CPU can be measured apart from the client's).

``with open_target("smollm2-135m-instruct", store) as t: t.url, t.model, t.process``
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from slmops.errors import SlmopsError
from slmops.models.store import ModelStore

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServerOptions:
    """Settings of the server we start for a store reference (``slmops serve`` flags)."""

    max_batch_size: int = 16
    max_queue: int = 256
    threads: int | None = None
    startup_timeout: float = 300.0
    precision: str | None = None  # ``slmops serve --precision`` (None: its default, a built-in's int4 variant)


@dataclass
class Target:
    url: str  # server root, without /v1
    model: str  # the ``model`` field to send
    api_key: str | None = None
    process: psutil.Process | None = None  # the server process, when we started it
    log: Path | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


@contextlib.contextmanager
def open_target(
    target: str,
    store: ModelStore | None = None,
    *,
    model: str | None = None,
    api_key: str | None = None,
    options: ServerOptions | None = None,
    progress: Progress | None = None,
) -> Iterator[Target]:
    """A URL (``http://host:port[/v1][#model]``) is used as is; anything else is a store
    reference served by a child ``slmops serve`` on a free local port for the duration."""
    say = progress or (lambda _m: None)
    if is_url(target):
        url, _, named = target.partition("#")
        root = url.rstrip("/").removesuffix("/v1")
        yield Target(root, model or named or _first_model(root, api_key), api_key)
        return
    yield from _serve_child(target, store or ModelStore(), options or ServerOptions(), say)


def _first_model(root: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{root}/v1/models", headers=headers, timeout=30)
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SlmopsError(
            f"Could not read the model list from {root}/v1/models ({type(exc).__name__}: {exc}).",
            "Name the model after '#' (http://host:port/v1#MODEL) or with --model.",
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _serve_child(ref: str, store: ModelStore, options: ServerOptions, say: Progress) -> Iterator[Target]:
    from slmops.models.refs import parse_ref
    from slmops.models.resolve import resolve

    resolve(ref, store, progress=say)  # a clear error (or a pull) before a process starts
    parsed = parse_ref(ref)
    model = parsed.path.resolve().name if parsed.path is not None else ref
    port = free_port()
    cmd = [sys.executable, "-m", "slmops", "serve", ref, "--port", str(port),
           "--max-batch-size", str(options.max_batch_size), "--max-queue", str(options.max_queue)]  # fmt: skip
    if options.threads:
        cmd += ["--threads", str(options.threads)]
    if options.precision:
        cmd += ["--precision", options.precision]
    env = {**os.environ, "SLMOPS_HOME": str(store.home)}
    env.pop("SLMOPS_API_KEY", None)
    with tempfile.TemporaryDirectory(prefix="slmops-target-") as tmp:
        log = Path(tmp) / "server.log"
        say(f"starting a server for {ref} on 127.0.0.1:{port}")
        with log.open("wb") as sink:
            child = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            target = Target(f"http://127.0.0.1:{port}", model, process=psutil.Process(child.pid), log=log)
            _wait_healthy(target, child, options.startup_timeout)
            yield target
        finally:
            _stop(child)


def _wait_healthy(target: Target, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SlmopsError(f"The server for {target.model} exited with code {child.returncode}: {_tail(target)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{target.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SlmopsError(f"The server for {target.model} did not answer /health within {timeout:.0f} s: {_tail(target)}")


def _tail(target: Target) -> str:
    lines = target.log.read_text(errors="replace").strip().splitlines() if target.log else []
    return " | ".join(lines[-3:]) or "(no output)"


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


@dataclass
class ProcessMonitor:
    """Peak resident memory and mean CPU of a process while ``with`` runs (sampled every
    ``interval_s``); ``rss_now()`` reads it at any moment."""

    process: psutil.Process
    interval_s: float = 0.05
    peak_rss: int = 0
    cpu_percent: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _cpu0: float = 0.0

    def rss_now(self) -> int:
        return self.process.memory_info().rss

    def _cpu(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.rss_now())

    def __enter__(self) -> ProcessMonitor:
        self.peak_rss, self._t0, self._cpu0 = self.rss_now(), time.perf_counter(), self._cpu()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="process-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.rss_now())
            wall = time.perf_counter() - self._t0
            self.cpu_percent = 100 * (self._cpu() - self._cpu0) / wall if wall > 0 else 0.0
