from __future__ import annotations

import httpx

from slmops.fleet import mqtt, protocol, services


def test_registry_answers_the_distribution_api(registry):
    r = httpx.get(f"http://{registry}/v2/", timeout=5)
    assert r.status_code == 200
    assert r.headers.get("docker-distribution-api-version") == "registry/2.0"


def test_retained_json_round_trip_over_a_wildcard(mosquitto):
    broker = mqtt.parse_broker(mosquitto)
    topics = {protocol.desired_topic("svc", f"d{i}"): f'{{"n": {i}}}'.encode() for i in range(3)}
    mqtt.publish_retained(broker, topics)
    got = mqtt.collect_retained(broker, protocol.fleet_wildcard("svc", "desired"))
    assert got == topics
    mqtt.publish_retained(broker, {protocol.desired_topic("svc", "d0"): b""})  # empty payload clears
    got = mqtt.collect_retained(broker, protocol.fleet_wildcard("svc", "desired"))
    assert set(got) == set(topics) - {protocol.desired_topic("svc", "d0")}


def test_parse_broker_urls(monkeypatch):
    monkeypatch.setenv("SLMOPS_BROKER_PASSWORD", "s3cret")
    b = mqtt.parse_broker("mqtts://dev1@broker.example")
    assert (b.host, b.port, b.tls, b.username, b.password) == ("broker.example", 8883, True, "dev1", "s3cret")
    assert "s3cret" not in repr(b) and "s3cret" not in b.url
    assert mqtt.parse_broker("mqtt://127.0.0.1").port == 1883
    import pytest

    from slmops.errors import SlmopsError

    with pytest.raises(SlmopsError, match="invalid broker address"):
        mqtt.parse_broker("http://x")


def test_connect_to_a_closed_port_is_a_clear_error():
    import pytest

    port = services.free_port()
    with pytest.raises(mqtt.BrokerError, match="cannot"):
        mqtt.connect(mqtt.parse_broker(f"mqtt://127.0.0.1:{port}"), timeout=2)


def test_up_and_down_record_detached_services(tmp_path):
    recorded = services.up(tmp_path)
    try:
        assert set(recorded) == {"broker", "registry"}
        assert services.read_recorded(tmp_path)["broker"].url == recorded["broker"].url
        again = services.up(tmp_path)  # idempotent: finds the running ones
        assert again["broker"].pid == recorded["broker"].pid
        assert httpx.get(f"http://{recorded['registry'].url}/v2/", timeout=5).status_code == 200
    finally:
        stopped = services.down(tmp_path)
    assert stopped == {"broker": True, "registry": True}
    assert services.read_recorded(tmp_path) == {}
