"""Helpers shared by the fleet tests: run an agent in-process, watch reported states."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from slmops.fleet import mqtt, protocol
from slmops.fleet.agent import Agent, AgentConfig
from slmops.fleet.protocol import ReportedState
from slmops.models.store import ModelStore


def add_tiny(store: ModelStore, tiny_model_dir: Path, name: str = "tiny", extra: dict[str, bytes] | None = None):
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        for rel, data in (extra or {}).items():
            (staged / "model" / rel).write_bytes(data)
        return store.add(staged / "model", name, "hf")


class StateWatch:
    """The latest reported state of every device of a fleet, live."""

    def __init__(self, broker_url: str, fleet: str) -> None:
        self.fleet = fleet
        self.states: dict[str, ReportedState] = {}
        self.history: dict[str, list[str]] = {}
        self.telemetry: dict[str, list[protocol.Telemetry]] = {}
        self.availability: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.client = mqtt.connect(mqtt.parse_broker(broker_url), on_message=self._on)
        self.client.subscribe(
            [(protocol.fleet_wildcard(fleet, leaf), 1) for leaf in ("state", "telemetry", "availability")]
        )

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        _, dev, leaf = protocol.split_topic(topic)
        with self._lock:
            if leaf == "state" and payload:
                st = protocol.parse(ReportedState, topic, payload)
                self.states[dev] = st
                self.history.setdefault(dev, []).append(st.status)
            elif leaf == "telemetry":
                self.telemetry.setdefault(dev, []).append(protocol.parse(protocol.Telemetry, topic, payload))
            elif leaf == "availability":
                self.availability[dev] = payload

    def wait(self, device: str, pred, timeout: float = 30.0, what: str = "") -> ReportedState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                st = self.states.get(device)
            if st is not None and pred(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"{device}: timed out waiting for {what or pred}; last state {self.states.get(device)}")

    def wait_telemetry(self, device: str, pred, timeout: float = 30.0) -> protocol.Telemetry:
        """The first telemetry window of ``device`` that satisfies ``pred`` (seen or still to come)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [t for t in self.telemetry.get(device, []) if pred(t)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"{device}: no telemetry window matched; got {self.telemetry.get(device, [])[-3:]}")

    def close(self) -> None:
        mqtt.close(self.client)


def start_agent(home: Path, broker_url: str, fleet: str, device: str, **kw) -> Agent:
    cfg = AgentConfig(
        device_id=device,
        fleet=fleet,
        broker=mqtt.parse_broker(broker_url),
        home=home,
        port=0,
        report_interval=kw.pop("report_interval", 0.5),
        retry_min_s=0.2,
        retry_max_s=1.0,
        threads=1,
        **kw,
    )
    agent = Agent(cfg)
    agent.start()
    threading.Thread(target=agent.run_forever, daemon=True, name=f"agent-{device}").start()
    return agent
