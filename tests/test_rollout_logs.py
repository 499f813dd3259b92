"""The fleet's shared request logs through the broker: the collector's persistent session gets
the batches published while it was away, `data from-logs --fleet` turns them into prompts."""

from __future__ import annotations

import json

from slmops.fleet import logs, mqtt, protocol
from slmops.fleet.protocol import LogBatch


def _publish(mosquitto, fleet, device, records):
    payload = LogBatch(device_id=device, records=records).to_payload()
    client = mqtt.connect(mqtt.parse_broker(mosquitto))
    try:
        mqtt.publish(client, protocol.logs_topic(fleet, device), payload, retain=False)
        mqtt.publish(client, protocol.logs_topic(fleet, device), b"{not json", retain=False)
    finally:
        mqtt.close(client)


def test_shared_logs_reach_from_logs_through_the_broker(tmp_path, mosquitto, monkeypatch):
    from typer.testing import CliRunner

    from slmops.cli import app

    fleet, home = "ro-logs", tmp_path / "home"
    broker = mqtt.parse_broker(mosquitto)
    first = logs.collect(broker, fleet, home, listen_s=0.2)  # registers the collector's session
    assert first["records"] == 0
    ok = {"status": 200, "messages": [{"role": "user", "content": "refund for order [REDACTED]"}]}
    _publish(mosquitto, fleet, "kiosk-1", [ok, {"status": 500, "prompt": "boom"}])
    _publish(mosquitto, fleet, "kiosk-2", [ok, {"status": 200, "prompt": "where is my parcel"}])
    out = tmp_path / "prompts.jsonl"
    res = CliRunner().invoke(app, ["data", "from-logs", "--fleet", fleet, "--broker", mosquitto, "--listen", "0.3",
                                   "--output", str(out), "--json"], env={"SLMOPS_HOME": str(home)})
    assert res.exit_code == 0, (res.output, res.exception)
    data = json.loads(res.stdout)
    assert data["fleet"]["records"] == 4 and data["fleet"]["devices"] == 2 and data["fleet"]["malformed"] == 2
    assert data["records"] == 2  # the failed request dropped, the repeated prompt once
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {"prompt": "where is my parcel"} in lines and "[REDACTED]" in json.dumps(lines)
    again = logs.collect(broker, fleet, home, listen_s=0.2)
    assert again["records"] == 0  # delivered once


def test_log_file_stays_bounded(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(1000)))
    logs._bound(path, 2000)
    kept = path.read_text().splitlines()
    assert path.stat().st_size <= 1000 and kept[-1] == '{"prompt": "p999"}' and json.loads(kept[0])
