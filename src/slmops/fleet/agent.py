"""The device agent: serves the OpenAI API from its own store and follows its desired state.

A level-triggered reconcile loop (one desired state at a time, the newest wins)::

    desired (retained MQTT) -> verifying (manifest, type, signature) -> downloading (every blob
    hashed as it streams, resumable) -> loading (beside the serving version) -> probing (the
    bundle's prompts) -> switch (the public name routes to the new version; requests already
    running finish on the old one) -> ok

Any failure keeps the old version serving and is reported as ``failed`` with its reason.
Registry and broker outages are retried with backoff. The agent keeps ``keep`` previous
versions on disk (an instant local rollback: re-assigning one of them downloads nothing) and
removes older ones. Every ``report_interval`` it publishes its state (retained) and telemetry
over the window; prompts and answers leave the device only with ``share_logs``, redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from typing import Any

import psutil

from slmops import __version__
from slmops.errors import SlmopsError
from slmops.fleet import mqtt, oci, probe, protocol
from slmops.fleet.agent_config import AgentConfig
from slmops.fleet.protocol import ActiveModel, DesiredState, ReportedState, Telemetry
from slmops.models.store import ModelStore
from slmops.serve.app import create_app
from slmops.serve.config import ServeConfig
from slmops.serve.runner import BackgroundServer

log = logging.getLogger("slmops.agent")
STATE_FILE = "agent.json"


class _Window:
    """Request samples of the current telemetry window (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[tuple[str, int, float | None, float | None, int]] = []

    def add(self, version: str, status: int, seconds: float | None, ttft: float | None, tokens: int) -> None:
        with self._lock:
            self._samples.append((version, status, seconds, ttft, tokens))

    def take(self) -> list[tuple[str, int, float | None, float | None, int]]:
        with self._lock:
            out, self._samples = self._samples, []
        return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = ModelStore(config.home)
        self.dir = self.store.home / "agent"
        self.dir.mkdir(parents=True, exist_ok=True)
        reqlog = self.dir / "requests.jsonl" if config.share_logs else None
        self.app = create_app(
            self.store,
            ServeConfig(
                host=config.host, port=config.port, memory_budget_mb=1 << 20, request_log=reqlog, threads=config.threads
            ),
        )
        self.pool = self.app.state.pool
        self.window = _Window()
        self.app.state.metrics.listeners.append(self._observe)
        self.started = time.time()
        self.status: str = "idle"
        self.reason: str | None = None
        self.desired: DesiredState | None = None
        self.active: ActiveModel | None = None
        self.served_name: str | None = None
        self.previous: list[dict[str, str]] = []  # [{digest, store_ref}], newest first
        self.probe_score: float | None = None
        self._next: DesiredState | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._client: Any = None
        self._server: BackgroundServer | None = None
        self._log_offset = 0
        self._proc = psutil.Process(os.getpid())
        self._load_state()

    # -- persistence ---------------------------------------------------------------------------
    def _load_state(self) -> None:
        path = self.dir / STATE_FILE
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self.active = ActiveModel(**data["active"]) if data.get("active") else None
            self.served_name = data.get("served_name")
            self.previous = list(data.get("previous") or [])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)

    def _save_state(self) -> None:
        data = {
            "active": self.active.model_dump() if self.active else None,
            "served_name": self.served_name,
            "previous": self.previous,
        }
        path = self.dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    # -- reporting -----------------------------------------------------------------------------
    def state(self) -> ReportedState:
        d = self.desired
        return ReportedState(
            device_id=self.config.device_id,
            fleet=self.config.fleet,
            labels=self.config.labels,
            status=self.status,  # type: ignore[arg-type]
            reason=self.reason,
            active=self.active,
            desired_digest=d.digest if d else None,
            desired_generation=d.generation if d else None,
            rollout=d.rollout if d else None,
            previous=[p["digest"] for p in self.previous],
            uptime_s=round(time.time() - self.started, 1),
            slmops_version=__version__,
            free_disk_bytes=shutil.disk_usage(self.store.home).free,
            port=self._server.port if self._server else self.config.port,
            report_interval_s=self.config.report_interval,
        )

    def _set(self, status: str, reason: str | None = None) -> None:
        self.status, self.reason = status, reason
        if status == "failed":
            log.warning("device %s: failed: %s", self.config.device_id, reason)
        self.publish_state()

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        client = self._client
        if client is not None and client.is_connected():
            client.publish(topic, payload, qos=1, retain=retain)

    def publish_state(self) -> None:
        c = self.config
        self._publish(protocol.state_topic(c.fleet, c.device_id), self.state().to_payload(), True)

    def telemetry(self, window_s: float) -> Telemetry:
        key = self.active.store_ref if self.active else None
        samples = [s for s in self.window.take() if s[0] == key]
        ok = [s for s in samples if s[1] < 400]
        latencies = [s[2] * 1000 for s in ok if s[2] is not None]
        ttfts = [s[3] * 1000 for s in ok if s[3] is not None]
        seconds = sum(s[2] or 0.0 for s in ok)
        tokens = sum(s[4] for s in ok)
        return Telemetry(
            device_id=self.config.device_id,
            digest=self.active.digest if self.active else None,
            rollout=self.active.rollout if self.active else None,
            window_s=round(window_s, 3),
            requests=len(samples),
            errors=sum(1 for s in samples if s[1] >= 500 or s[1] == 429),
            p50_ms=_pct(latencies, 0.5),
            p95_ms=_pct(latencies, 0.95),
            ttft_ms=_pct(ttfts, 0.5),
            tokens_per_second=tokens / seconds if seconds > 0 else None,
            memory_mb=round(self._proc.memory_info().rss / 2**20, 1),
            probe_score=self.active.probe_score if self.active else None,
        )

    def _observe(
        self, model: str, version: str, status: int | str, *, seconds=None, ttft=None, completion_tokens: int = 0
    ) -> None:
        try:
            code = int(status)
        except (TypeError, ValueError):
            code = 500
        self.window.add(version, code, seconds, ttft, completion_tokens)

    def _report_loop(self) -> None:
        c = self.config
        last = time.monotonic()
        while not self._stop.wait(c.report_interval):
            now = time.monotonic()
            tele = self.telemetry(now - last)
            last = now
            self._publish(protocol.telemetry_topic(c.fleet, c.device_id), tele.to_payload(), False)
            self.publish_state()  # keeps "last seen" fresh
            if c.share_logs:
                self._share_logs()

    def _share_logs(self) -> None:
        path = self.dir / "requests.jsonl"
        if not path.exists():
            return
        size = path.stat().st_size
        if size < self._log_offset:  # rotated
            self._log_offset = 0
        with open(path, "rb") as f:
            f.seek(self._log_offset)
            chunk = f.read(1 << 20)
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        records = []
        for line in chunk[:end].splitlines():
            try:
                records.append(json.loads(line))  # already redacted by the request log
            except ValueError:
                continue
        if records:
            batch = protocol.LogBatch(device_id=self.config.device_id, records=records[:200])
            self._publish(protocol.logs_topic(self.config.fleet, self.config.device_id), batch.to_payload(), False)

    # -- MQTT ----------------------------------------------------------------------------------
    def _on_connect(self, client) -> None:
        c = self.config
        client.subscribe(protocol.desired_topic(c.fleet, c.device_id), qos=1)
        client.publish(protocol.availability_topic(c.fleet, c.device_id), b"online", qos=1, retain=True)
        client.publish(protocol.state_topic(c.fleet, c.device_id), self.state().to_payload(), qos=1, retain=True)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # a cleared desired state: keep serving what runs
        try:
            desired = protocol.parse(DesiredState, topic, payload)
        except protocol.ProtocolError as exc:
            self._set("failed", str(exc))
            return
        with self._cond:
            self._next = desired
            self._cond.notify()

    # -- reconcile -----------------------------------------------------------------------------
    def _take(self, timeout: float) -> DesiredState | None:
        with self._cond:
            if self._next is None:
                self._cond.wait(timeout)
            d, self._next = self._next, None
            return d

    def _superseded(self) -> bool:
        return self._stop.is_set() or self._next is not None

    def reconcile(self, d: DesiredState) -> None:
        """Take the device from what it runs to ``d``; a failure leaves the old version serving."""
        self.desired = d
        try:
            self._apply(d)
        except SlmopsError as exc:
            self._set("failed", str(exc))
        except Exception as exc:  # a bug must not take the device down: report it, keep serving
            log.error("reconcile failed:\n%s", traceback.format_exc())
            self._set("failed", f"{type(exc).__name__}: {exc}")

    def _apply(self, d: DesiredState) -> None:
        if self.active and self.active.digest == d.digest:
            if self.served_name != d.served_name:
                old = self.pool.switch(d.served_name, self.active.store_ref)
                self.served_name = d.served_name
                self._save_state()
                self._retire(old)
            self.active = self.active.model_copy(update={"rollout": d.rollout})
            self._set("ok")
            return
        ref = oci.parse_oci(d.reference)
        if ref.digest and ref.digest != d.digest:
            raise SlmopsError(f"the desired reference {d.reference} does not match its digest {d.digest}.")
        ref = ref.with_digest(d.digest)
        client = oci.Client(
            ref.registry, credentials=self.config.registry_credentials, plain_http=self.config.plain_http
        )
        result = self._with_retries(lambda: self._fetch(client, ref, d), d)
        if result is None:
            return  # superseded or stopping
        rec = result.record
        self._set("loading")
        loaded = self.pool.prepare(rec.ref)
        self._set("probing")
        oci_info = rec.recipe.get("oci") or {}
        items = oci_info.get("probe") or []
        score = probe.run_probe(loaded.engine, items, max_tokens=self.config.probe_max_tokens)
        minimum = float(oci_info.get("probe_min_score", probe.DEFAULT_MIN_SCORE))
        if score is not None and score < minimum:
            kept = {p["store_ref"] for p in self.previous} | ({self.active.store_ref} if self.active else set())
            if rec.ref not in kept:  # never routed to: unload and remove it
                self.pool.retire(rec.ref, grace_s=0)
                with contextlib.suppress(SlmopsError):
                    self.store.remove(rec.ref, force=True)
            raise SlmopsError(f"probe score {score:.2f} of {d.digest[:19]} is below {minimum:.2f}; not switched.")
        old = self.pool.switch(d.served_name, rec.ref)
        if self.active and self.active.digest != d.digest:
            self.previous = [{"digest": self.active.digest, "store_ref": self.active.store_ref}] + [
                p for p in self.previous if p["digest"] not in (self.active.digest, d.digest)
            ]
        self.previous = [p for p in self.previous if p["digest"] != d.digest]
        self.active = ActiveModel(
            digest=d.digest, reference=d.reference, store_ref=rec.ref, rollout=d.rollout, probe_score=score
        )
        self.served_name = d.served_name
        self._save_state()
        self._set("ok")
        self._retire(old)
        self._prune()

    def _fetch(self, client: oci.Client, ref: oci.OciRef, d: DesiredState) -> oci.PullResult:
        self._set("verifying")
        art = oci.resolve(client, ref, trust=self.config.trust)
        fmt = art.config.get("format")
        if fmt != d.format:
            raise oci.ArtifactError(f"the desired state says format {d.format} but {ref} is {fmt}.")
        if oci.find_pulled(self.store, art.digest) is None:
            self._set("downloading")
        return oci.pull(
            self.store,
            ref,
            client=client,
            trust=self.config.trust,
            artifact=art,
            min_free_bytes=self.config.min_free_bytes,
            rate_limit=self.config.download_rate_limit,
        )

    def _with_retries(self, step, d: DesiredState):
        delay = self.config.retry_min_s
        while True:
            try:
                return step()
            except oci.RegistryError as exc:
                if self._superseded():
                    return None
                self.status, self.reason = "downloading", f"{exc} Retrying in {delay:.1f}s."
                self.publish_state()
                log.warning("%s", self.reason)
                if self._stop.wait(delay) or self._next is not None:
                    return None
                delay = min(self.config.retry_max_s, delay * 2)

    def _retire(self, keys: list[str]) -> None:
        for key in keys:
            threading.Thread(target=self.pool.retire, args=(key,), daemon=True).start()

    def _prune(self) -> None:
        """Keep ``keep`` previous versions on disk; remove older ones the agent pulled."""
        self.previous = self.previous[: self.config.keep]
        kept = {p["store_ref"] for p in self.previous} | ({self.active.store_ref} if self.active else set())
        for rec in self.store.list():
            if rec.recipe.get("oci") and rec.ref not in kept:
                with contextlib.suppress(SlmopsError):
                    self.store.remove(rec.ref, force=True)
        self._save_state()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve, connect (in the background, with backoff) and start reporting."""
        if self.active and self.served_name and self.store.find(self.active.store_ref):
            try:
                self.pool.prepare(self.active.store_ref)
                self.pool.switch(self.served_name, self.active.store_ref)
                self.status = "ok"
            except SlmopsError as exc:
                self.status, self.reason = "failed", f"could not restore {self.active.store_ref}: {exc}"
        self._server = BackgroundServer(self.app, host=self.config.host, port=self.config.port)
        self._server.__enter__()
        c = self.config
        self._client = mqtt.make_client(
            c.broker,
            client_id=f"slmops-agent-{c.fleet}-{c.device_id}",
            will=(protocol.availability_topic(c.fleet, c.device_id), b"offline"),
            on_connect=self._on_connect,
            on_message=self._on_message,
            max_backoff=max(1.0, c.retry_max_s),
        )
        mqtt.start(self._client, c.broker)
        threading.Thread(target=self._report_loop, name="agent-report", daemon=True).start()

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def run_forever(self) -> None:
        while not self._stop.is_set():
            d = self._take(timeout=1.0)
            if d is not None:
                self.reconcile(d)

    def request_stop(self) -> None:
        """Make :meth:`run_forever` return (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        c = self.config
        if self._client is not None:
            if self._client.is_connected():
                info = self._client.publish(
                    protocol.availability_topic(c.fleet, c.device_id), b"offline", qos=1, retain=True
                )
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2)
            mqtt.close(self._client)
        if self._server is not None:
            self._server.__exit__(None, None, None)
        self.pool.close()
