"""The device agent in-process against a real Mosquitto and a real registry: it follows its
desired state, hot-swaps under load without dropping requests, and every fault leaves the old
version serving with the reason reported."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from slmops.fleet import control, mqtt, oci, protocol, signing
from slmops.models.store import ModelStore
from tests.fleet_helpers import StateWatch, add_tiny, start_agent


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_model_dir, registry):
    """Two versions of the tiny model in the registry: v1, and v2 (other weights' file set)."""
    store = ModelStore(tmp_path_factory.mktemp("agent-src"))
    add_tiny(store, tiny_model_dir)
    add_tiny(store, tiny_model_dir, extra={"notes.txt": b"version two\n"})
    out = {}
    for v in (1, 2):
        out[v] = oci.push(store, f"tiny:{v}", oci.parse_oci(f"oci://{registry}/agent/tiny:v{v}"))
    out["store"] = store
    return out


def _assign(mosquitto, fleet, device, res, served="support", fmt="hf"):
    return control.assign(mqtt.parse_broker(mosquitto), fleet, [device], reference=str(res.reference),
                          digest=res.digest, format=fmt, served_name=served)


def _chat(url, model="support"):
    return httpx.post(f"{url}/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_agent_follows_desired_state_and_keeps_previous(tmp_path, mosquitto, pushed):
    fleet = "f-follow"
    watch = StateWatch(mosquitto, fleet)
    agent = start_agent(tmp_path / "dev", mosquitto, fleet, "dev1", labels={"site": "a"}, keep=1)
    try:
        watch.wait("dev1", lambda s: s.status == "idle", what="idle")
        assert watch.availability.get("dev1") == b"online"
        _assign(mosquitto, fleet, "dev1", pushed[1])
        st = watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[1].digest and s.status == "ok")
        assert st.labels == {"site": "a"} and st.desired_generation == 1
        r = _chat(agent.url)
        assert r.status_code == 200, r.text
        _assign(mosquitto, fleet, "dev1", pushed[2])
        st = watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[2].digest and s.status == "ok")
        assert st.previous == [pushed[1].digest] and st.desired_generation == 2
        seen = watch.history["dev1"]
        for stage in ("verifying", "downloading", "loading", "probing", "ok"):
            assert stage in seen
        # pulled files are the pushed files, digest for digest
        rec = agent.store.get(st.active.store_ref)
        assert {rel: oci.sha256_file(p) for rel, p in oci.model_files(rec)} == {
            rel: oci.sha256_file(p) for rel, p in oci.model_files(pushed["store"].get("tiny:2"))
        }
        # roll back to v1: already on disk, nothing downloaded
        before = len(watch.history["dev1"])
        _assign(mosquitto, fleet, "dev1", pushed[1])
        watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[1].digest and s.status == "ok")
        assert "downloading" not in watch.history["dev1"][before:]
        tele = [t for t in watch.telemetry.get("dev1", []) if t.requests]
        assert tele and tele[0].p95_ms is not None and tele[0].memory_mb > 0
    finally:
        agent.stop()
        watch.close()
