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
    return control.assign(
        mqtt.parse_broker(mosquitto),
        fleet,
        [device],
        reference=str(res.reference),
        digest=res.digest,
        format=fmt,
        served_name=served,
    )


def _chat(url, model="support"):
    return httpx.post(
        f"{url}/v1/chat/completions",
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )


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
        # the request is counted in a telemetry window of v1 (windows only count the active version)
        tele = watch.wait_telemetry("dev1", lambda t: t.requests and t.digest == pushed[1].digest)
        assert tele.p95_ms is not None and tele.memory_mb > 0 and tele.errors == 0
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
    finally:
        agent.stop()
        watch.close()


def test_switch_under_load_drops_no_request(tmp_path, mosquitto, pushed):
    fleet = "f-load"
    watch = StateWatch(mosquitto, fleet)
    agent = start_agent(tmp_path / "dev", mosquitto, fleet, "dev1")
    try:
        _assign(mosquitto, fleet, "dev1", pushed[1])
        watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[1].digest and s.status == "ok")
        v1 = agent.active.store_ref
        stop = threading.Event()
        results: list[tuple[int, str]] = []

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(
                        f"{agent.url}/v1/chat/completions",
                        json={"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                    )
                    results.append((r.status_code, r.headers.get("x-slmops-model-version", "")))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        _assign(mosquitto, fleet, "dev1", pushed[2])
        watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[2].digest and s.status == "ok")
        v2 = agent.active.store_ref
        time.sleep(1.5)  # the old version retires after its last request
        stop.set()
        for t in threads:
            t.join()
        codes = [c for c, _ in results]
        assert codes and set(codes) == {200}, f"dropped: {[c for c in codes if c != 200]}"
        versions = [v for _, v in results]
        assert v1 in versions and v2 in versions and versions[-1] == v2
        assert [m.key for m in agent.pool.loaded()] == [v2]  # the old one was unloaded
    finally:
        agent.stop()
        watch.close()


def _refused(watch, mosquitto, fleet, agent, res, match, served="support", fmt="hf", keep_digest=None):
    """Assign ``res`` and check it is refused with ``match`` while the old version still serves."""
    _assign(mosquitto, fleet, "dev1", res, served=served, fmt=fmt)
    st = watch.wait("dev1", lambda s: s.status == "failed" and s.desired_digest == res.digest, what=match)
    assert match in (st.reason or ""), st.reason
    assert st.active and st.active.digest == keep_digest
    assert _chat(agent.url).status_code == 200
    return st


def test_faults_keep_the_old_version_serving(tmp_path, mosquitto, pushed, registry, registry_service, tiny_model_dir):
    fleet = "f-faults"
    broker = mqtt.parse_broker(mosquitto)
    watch = StateWatch(mosquitto, fleet)
    agent = start_agent(tmp_path / "dev", mosquitto, fleet, "dev1", min_free_bytes=0)
    try:
        _assign(mosquitto, fleet, "dev1", pushed[1])
        watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[1].digest and s.status == "ok")
        good = pushed[1].digest

        # malformed desired JSON, and an unknown format: reported, nothing changes
        mqtt.publish_retained(broker, {protocol.desired_topic(fleet, "dev1"): b"{not json"})
        st = watch.wait("dev1", lambda s: s.status == "failed", what="malformed")
        assert "not UTF-8 JSON" in st.reason and st.active.digest == good
        bad = json.loads(
            protocol.DesiredState(
                reference=str(pushed[2].reference), digest=pushed[2].digest, format="hf", served_name="support"
            ).to_payload()
        )
        bad["format"] = "tflite"
        mqtt.publish_retained(broker, {protocol.desired_topic(fleet, "dev1"): json.dumps(bad).encode()})
        st = watch.wait("dev1", lambda s: s.status == "failed" and "format" in (s.reason or ""), what="format")
        assert st.active.digest == good and _chat(agent.url).status_code == 200

        # a manifest of another artifact type
        client = oci.Client(registry)
        cfg = client.upload_bytes("agent/other", b"{}")
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.MANIFEST_MEDIA_TYPE,
                "layers": [],
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
            }
        ).encode()
        other = oci.PushResult(
            oci.OciRef(registry, "agent/other", None, oci.sha256_bytes(body)),
            client.put_manifest("agent/other", "v1", body),
            "v1",
            0,
            0,
            False,
            0,
        )
        _refused(watch, mosquitto, fleet, agent, other, "not an slmops model", keep_digest=good)

        # a format that does not match the artifact
        _refused(watch, mosquitto, fleet, agent, pushed[2], "format gguf", fmt="gguf", keep_digest=good)

        # a failing probe
        src = ModelStore(tmp_path / "src")
        add_tiny(src, tiny_model_dir)
        failing = oci.push(
            src,
            "tiny:1",
            oci.parse_oci(f"oci://{registry}/agent/probed:fail"),
            probe=[{"prompt": "2+2?", "expected": "zzz-never"}],
            probe_min_score=1.0,
        )
        st = _refused(watch, mosquitto, fleet, agent, failing, "probe score 0.00", keep_digest=good)
        assert "probing" in watch.history["dev1"]

        # a corrupted blob (same size, other bytes) in the registry's storage
        add_tiny(src, tiny_model_dir, extra={"c.txt": b"corrupt me\n" * 10})
        corrupt = oci.push(src, "tiny:2", oci.parse_oci(f"oci://{registry}/agent/corrupt:v1"))
        manifest = json.loads(client.get_manifest("agent/corrupt", corrupt.digest)[0])
        layer = next(la for la in manifest["layers"] if la["annotations"][oci.TITLE] == "c.txt")
        hexd = layer["digest"].split(":")[1]
        blob = registry_service.folder + f"/data/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
        with open(blob, "r+b") as f:
            f.write(b"X")
        _refused(watch, mosquitto, fleet, agent, corrupt, "corrupted", keep_digest=good)
        assert [r.ref for r in agent.store.list()] == [agent.active.store_ref]  # nothing failed kept

        # a full disk (the agent keeps a free-space reserve; more than the disk has)
        agent.config = agent.config.__class__(**{**agent.config.__dict__, "min_free_bytes": 1 << 60})
        _refused(watch, mosquitto, fleet, agent, pushed[2], "Not enough disk space", keep_digest=good)
    finally:
        agent.stop()
        watch.close()


def test_trust_key_refuses_unsigned_and_accepts_signed(tmp_path, mosquitto, pushed, registry):
    fleet = "f-trust"
    keys = tmp_path / "keys"
    priv, pub = signing.generate("rel", keys)
    signed = oci.push(pushed["store"], "tiny:2", oci.parse_oci(f"oci://{registry}/agent/signed:v2"), sign_key=priv)
    watch = StateWatch(mosquitto, fleet)
    agent = start_agent(tmp_path / "dev", mosquitto, fleet, "dev1", trust=pub)
    try:
        _assign(mosquitto, fleet, "dev1", pushed[1])  # unsigned
        st = watch.wait("dev1", lambda s: s.status == "failed", what="unsigned refused")
        assert "not signed" in st.reason and st.active is None
        _assign(mosquitto, fleet, "dev1", signed)
        watch.wait("dev1", lambda s: s.active and s.active.digest == signed.digest and s.status == "ok")
    finally:
        agent.stop()
        watch.close()


def test_registry_down_is_retried_with_backoff(tmp_path, mosquitto, pushed, tiny_model_dir):
    from slmops.fleet import services

    fleet = "f-regdown"
    folder = tmp_path / "reg"
    svc, proc = services.start_registry(folder)
    src = ModelStore(tmp_path / "src")
    add_tiny(src, tiny_model_dir)
    res = oci.push(src, "tiny:1", oci.parse_oci(f"oci://{svc.url}/x/tiny:v1"))
    proc.terminate()
    proc.wait(10)
    watch = StateWatch(mosquitto, fleet)
    agent = start_agent(tmp_path / "dev", mosquitto, fleet, "dev1")
    try:
        _assign(mosquitto, fleet, "dev1", res)
        st = watch.wait("dev1", lambda s: "Retrying" in (s.reason or ""), what="retrying")
        assert "cannot reach the registry" in st.reason
        _, proc = services.start_registry(folder, port=svc.port)
        watch.wait("dev1", lambda s: s.active and s.active.digest == res.digest and s.status == "ok", timeout=30)
    finally:
        agent.stop()
        watch.close()
        proc.terminate()
        proc.wait(10)


def test_broker_down_at_start_and_mid_run(tmp_path, pushed):
    from slmops.fleet import services

    fleet = "f-brokerdown"
    port = services.free_port()
    url = f"mqtt://127.0.0.1:{port}"
    agent = start_agent(tmp_path / "dev", url, fleet, "dev1")  # no broker yet: serves, keeps trying
    proc = None
    try:
        assert httpx.get(f"{agent.url}/health", timeout=5).status_code == 200
        svc, proc = services.start_mosquitto(tmp_path / "mq", port=port)
        watch = StateWatch(url, fleet)
        watch.wait("dev1", lambda s: s.status == "idle", timeout=30, what="connected after start")
        _assign(url, fleet, "dev1", pushed[1])
        watch.wait("dev1", lambda s: s.active and s.active.digest == pushed[1].digest and s.status == "ok")
        watch.close()
        proc.terminate()
        proc.wait(10)
        time.sleep(0.5)
        assert _chat(agent.url).status_code == 200  # keeps serving without its broker
        _, proc = services.start_mosquitto(tmp_path / "mq", port=port)
        watch = StateWatch(url, fleet)
        before = time.time()
        watch.wait("dev1", lambda s: s.updated_at > before and s.status == "ok", timeout=30, what="re-published")
        watch.close()
    finally:
        agent.stop()
        if proc:
            proc.terminate()
            proc.wait(10)


def test_prompts_leave_the_device_only_with_share_logs_and_redacted(tmp_path, mosquitto, pushed):
    fleet = "f-logs"
    seen: dict[str, list] = {"dev1": [], "dev2": []}
    listener = mqtt.connect(
        mqtt.parse_broker(mosquitto),
        on_message=lambda t, p, r: seen[protocol.split_topic(t)[1]].append(json.loads(p)),
    )
    listener.subscribe(protocol.fleet_wildcard(fleet, "logs"), qos=1)
    watch = StateWatch(mosquitto, fleet)
    quiet = start_agent(tmp_path / "d1", mosquitto, fleet, "dev1")
    sharing = start_agent(tmp_path / "d2", mosquitto, fleet, "dev2", share_logs=True)
    try:
        for dev, agent in (("dev1", quiet), ("dev2", sharing)):
            _assign(mosquitto, fleet, dev, pushed[1])
            watch.wait(dev, lambda s: s.status == "ok" and s.active is not None)
            r = httpx.post(
                f"{agent.url}/v1/chat/completions",
                timeout=30,
                json={
                    "model": "support",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}],
                },
            )
            assert r.status_code == 200
        deadline = time.monotonic() + 10
        while not seen["dev2"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert seen["dev1"] == []  # no --share-logs: nothing leaves the device
        text = json.dumps(seen["dev2"])
        assert seen["dev2"] and "[EMAIL]" in text and "jane.doe@example.com" not in text
    finally:
        quiet.stop()
        sharing.stop()
        watch.close()
        mqtt.close(listener)
