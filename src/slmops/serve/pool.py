"""Model routing and the set of loaded models.

The ``model`` field of a request names a store model: ``name`` (latest version),
``name:version``, ``name@alias``, or ``base+adapter`` (a PEFT adapter applied to a base).
Each resolves to a *key* (``name:3``, ``base:1+adapter:2``): the version that serves it. A
plain key names one loaded engine with its own scheduler; every ``base+adapter`` key of one
base shares one multi-adapter engine (key ``base:1+*``): the base loads once, each adapter
loads into it on first use (between decode steps), and requests for different adapters
batch together, each row with its own adapter. Models load on first use; beyond the memory
budget the least recently used idle ones are unloaded. Paths are never accepted from HTTP
clients: only models named at start-up may be paths.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from slmops.engines.base import Engine
from slmops.errors import ModelNotFoundError, SlmopsError
from slmops.models.refs import parse_ref
from slmops.models.store import ModelRecord, ModelStore
from slmops.serve.canary import Router
from slmops.serve.config import ServeConfig
from slmops.serve.metrics import ServeMetrics
from slmops.serve.protocol import APIError, ModelDefaults
from slmops.serve.scheduler import Worker


@dataclass
class Loaded:
    key: str
    engine: Engine
    worker: Worker
    size_bytes: int
    defaults: ModelDefaults
    context_length: int | None
    last_used: float = 0.0


@dataclass(frozen=True)
class Route:
    """Where one request goes: the loaded engine, the version that serves it (metric label and
    response header) and the adapter its rows ask the engine for."""

    loaded: Loaded
    version: str
    adapter: str | None = None


ADAPTERS = "+*"  # suffix of the key of a base's multi-adapter engine


def model_bytes(engine: Engine, fallback: int) -> int:
    model = getattr(engine, "model", None)
    if model is None:
        return fallback
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) or fallback


def model_defaults(engine: Engine) -> ModelDefaults:
    """Sampling defaults from the model's generation config, when it asks to sample."""
    cfg = getattr(getattr(engine, "model", None), "generation_config", None)
    if cfg is None or not getattr(cfg, "do_sample", False):
        return ModelDefaults()
    return ModelDefaults(temperature=getattr(cfg, "temperature", None), top_p=getattr(cfg, "top_p", None))


def _not_found(exc: SlmopsError) -> APIError:
    return APIError(404, str(exc), param="model", code="model_not_found")


class ModelPool:
    def __init__(self, store: ModelStore, config: ServeConfig, metrics: ServeMetrics) -> None:
        self.store, self.config, self.metrics = store, config, metrics
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self._paths: dict[str, Path] = {}  # public name -> folder, for models named at start-up
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.router = Router(config.routes)

    # -- routing -----------------------------------------------------------------------------
    def resolve(self, model: str) -> str:
        """The key a ``model`` field routes to; an unknown model is a 404 with suggestions."""
        if model in self._paths:
            return str(self._paths[model])
        base, plus, adapter = model.partition("+")
        try:
            rec = self._record(base)
            if not plus:
                return rec.ref
            ad = self._record(adapter)
        except ModelNotFoundError as exc:
            raise _not_found(exc) from exc
        except SlmopsError as exc:
            raise APIError(400, str(exc), param="model", code="invalid_model") from exc
        if ad.format != "peft-adapter":
            raise APIError(400, f"{ad.ref} is a {ad.format} model, not an adapter.", param="model")
        return f"{rec.ref}+{ad.ref}"

    def _record(self, ref: str) -> ModelRecord:
        parsed = parse_ref(ref, allow_path=False)
        if parsed.path is not None:
            raise SlmopsError(f"{ref!r} is a path; the server only routes to store models.", "Use NAME[:VERSION].")
        return self.store.get(parsed)

    # -- loading -----------------------------------------------------------------------------
    async def get(self, model: str, *, user: str | None = None, pin: str | None = None) -> Route:
        """The loaded model a request routes to (a canary route picks one of its targets)."""
        key = self.resolve(self.router.pick(model, user=user, pin=pin) if model in self.router else model)
        base, plus, adapter = key.partition("+")
        engine_key = base + ADAPTERS if plus else key
        loaded = self._touch(engine_key)
        if loaded is None or (plus and adapter not in getattr(loaded.engine, "adapters", {})):
            loaded = await asyncio.to_thread(self._load, engine_key, adapter or None)
        return Route(loaded, key, adapter or None)

    def preload(self, ref: str) -> Loaded:
        """Load a model named at start-up (a store reference, a catalog name or a path)."""
        parsed = parse_ref(ref)
        if parsed.path is not None:
            self._paths[parsed.path.name] = parsed.path.resolve()
            return self._load(str(parsed.path.resolve()))
        from slmops.models.resolve import resolve

        resolve(ref, self.store)  # pulls a catalog model not yet in the store
        return self._load(self.resolve(ref))

    def _touch(self, key: str) -> Loaded | None:
        with self._guard:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                loaded.last_used = time.monotonic()
            return loaded

    def _load(self, key: str, adapter: str | None = None) -> Loaded:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one load per key, however many requests ask at once
            loaded = self._touch(key)
            if loaded is not None:
                if adapter is not None:
                    self._add_adapter(loaded, adapter)
                return loaded
            engine = self._open(key, adapter)
            size = model_bytes(engine, 0)
            worker = Worker(
                engine, name=key, max_batch_size=self.config.max_batch_size, max_queue=self.config.max_queue
            )
            self.metrics.watch(worker, size)
            context = getattr(engine, "context_length", None)
            loaded = Loaded(key, engine, worker, size, model_defaults(engine), context, time.monotonic())
            with self._guard:
                self._loaded[key] = loaded
            self._evict(keep=key)
            return loaded

    def _open(self, key: str, adapter: str | None) -> Engine:
        from slmops.engines import open_engine, open_engine_with_adapters

        if adapter is None:
            return open_engine(key, self.store, threads=self.config.threads)
        return open_engine_with_adapters(
            key.removesuffix(ADAPTERS), [adapter], self.store, threads=self.config.threads
        )

    def _add_adapter(self, loaded: Loaded, adapter: str) -> None:
        """Load another adapter into a base's running multi-adapter engine, between two steps."""
        from slmops.engines.adapters import add_adapter

        if adapter in getattr(loaded.engine, "adapters", {}):
            return
        with loaded.worker.exclusive():
            add_adapter(loaded.engine, loaded.key.removesuffix(ADAPTERS), adapter, self.store)
        loaded.size_bytes = model_bytes(loaded.engine, loaded.size_bytes)
        self._evict(keep=loaded.key)

    def _evict(self, keep: str) -> None:
        budget = self.config.memory_budget_mb * (1 << 20)
        with self._guard:
            total = sum(m.size_bytes for m in self._loaded.values())
            victims = []
            for key, m in self._loaded.items():  # least recently used first
                if total <= budget:
                    break
                if key != keep and not m.worker.busy:
                    victims.append(m)
                    total -= m.size_bytes
            for m in victims:
                del self._loaded[m.key]
        for m in victims:
            self.unload(m)

    def unload(self, m: Loaded) -> None:
        m.worker.close()
        m.engine.close()
        self.metrics.forget(m.key)

    # -- hot swap (the fleet agent) ---------------------------------------------------------
    def prepare(self, ref: str) -> Loaded:
        """Load (and keep loaded) a store model beside whatever serves now, without routing to it."""
        return self._load(self.resolve(ref))

    def switch(self, name: str, ref: str) -> list[str]:
        """Route the public ``name`` to ``ref`` (load it first with :meth:`prepare`). Requests
        already running keep their engine; new ones go to ``ref``. Returns the keys ``name``
        routed to before, for :meth:`retire`."""
        key = self.resolve(ref)
        before = [self.resolve(r) for r in self.router.snapshot().get(name, {})] if name in self.router else []
        self.router.set(name, {key: 1.0})
        return [k for k in before if k != key]

    def retire(self, key: str, *, grace_s: float = 1.0, timeout_s: float = 120.0) -> bool:
        """Unload ``key`` once no request is queued or running on it (after ``grace_s``, so a
        request routed just before a :meth:`switch` still finds it). False if it was not loaded."""
        time.sleep(grace_s)
        deadline = time.monotonic() + timeout_s
        with self._guard:
            m = self._loaded.get(key)
        if m is None:
            return False
        while m.worker.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._guard:
            self._loaded.pop(key, None)
        self.unload(m)
        return True

    # -- views -------------------------------------------------------------------------------
    def loaded(self) -> list[Loaded]:
        with self._guard:
            return list(self._loaded.values())

    def listing(self) -> list[tuple[str, int]]:
        """(id, created) for every routable model: store names, versions, aliases, start-up paths."""
        out: dict[str, int] = {}
        for rec in self.store.list():
            created = _epoch(rec.created_at)
            out[rec.name] = max(out.get(rec.name, 0), created)
            out[rec.ref] = created
            for alias in rec.aliases:
                out[f"{rec.name}@{alias}"] = created
        for name in [*self._paths, *self.router.names()]:
            out[name] = 0
        return sorted(out.items())

    def close(self) -> None:
        for m in self.loaded():
            self.unload(m)
        with self._guard:
            self._loaded.clear()


def _epoch(iso: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0
