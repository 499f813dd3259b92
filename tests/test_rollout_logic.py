"""Roll-out pure logic: wave plans, device order, budgets, the gate and telemetry aggregation."""

from __future__ import annotations

import pytest

from slmops.errors import SlmopsError
from slmops.fleet.gate import aggregate, evaluate_gate, gate_names
from slmops.fleet.protocol import Telemetry
from slmops.fleet.rollout import parse_duration
from slmops.fleet.simulator import parse_fault, parse_labels
from slmops.fleet.waves import (
    budget_for,
    cut_waves,
    order_devices,
    parse_budget,
    parse_selector,
    parse_waves,
)


def test_waves_counts_and_percentages_end_at_100():
    steps = parse_waves("1, 10%,50%,100%")
    assert [s.target(1000) for s in steps] == [1, 100, 500, 1000]
    assert [s.target(7) for s in steps] == [1, 1, 4, 7]
    order = [f"d{i}" for i in range(7)]
    waves = cut_waves(order, steps)
    assert waves == [["d0"], ["d1", "d2", "d3"], ["d4", "d5", "d6"]]  # the empty 10% wave is dropped
    assert sum(waves, []) == order


@pytest.mark.parametrize("bad, fragment", [
    ("1,10%,50%", "does not end at 100%"),
    ("1,10%,abc,100%", "cannot read 'abc'"),
    ("0,100%", "whole count"),
    ("1.5,100%", "whole count"),
    ("150%", "percentage"),
])
def test_waves_refused(bad, fragment):
    with pytest.raises(SlmopsError, match=fragment):
        parse_waves(bad)


def test_order_is_deterministic_stratified_and_online_first():
    labels = {f"d{i:03d}": {"zone": "abc"[i % 3] if i % 10 < 9 else "d"} for i in range(300)}
    a = order_devices("ro-1", labels)
    assert a == order_devices("ro-1", labels) and sorted(a) == sorted(labels)
    assert a != order_devices("ro-2", labels)  # another roll-out, another order
    first30 = [labels[d]["zone"] for d in a[:30]]
    # every prefix holds each label value in proportion (zone d is 10% of the fleet)
    assert first30.count("d") == 3 and all(first30.count(z) == 9 for z in "abc")
    online = [d for d in labels if int(d[1:]) % 2 == 0]
    b = order_devices("ro-1", labels, first=online)
    assert set(b[:150]) == set(online)


def test_budget_and_selector():
    assert budget_for(parse_budget("10%"), 9) == 0 and budget_for(parse_budget("10%"), 100) == 10
    assert budget_for(parse_budget("2"), 1) == 2
    with pytest.raises(SlmopsError, match="max-unavailable"):
        parse_budget("ten")
    assert parse_selector("zone=a, hw=pi5") == {"zone": "a", "hw": "pi5"}
    with pytest.raises(SlmopsError, match="key=value"):
        parse_selector("zone")


def test_durations():
    assert parse_duration("120s") == 120 and parse_duration("2m") == 120 and parse_duration("90") == 90
    with pytest.raises(SlmopsError, match="cannot read"):
        parse_duration("soon")


def test_gate_names_are_checked_before_anything():
    assert gate_names("p95_ms <= 1.2 * baseline.p95_ms and probe_score >= baseline.probe_score - 5") == [
        "p95_ms", "baseline.p95_ms", "probe_score", "baseline.probe_score"]
    with pytest.raises(SlmopsError, match="'p99_ms', which is not a fleet metric"):
        gate_names("p99_ms < 100")
    with pytest.raises(SlmopsError, match="not a comparison"):
        gate_names("p95_ms + 1")
    with pytest.raises(SlmopsError, match="cannot read"):
        gate_names("p95_ms <")
    with pytest.raises(SlmopsError, match="only numbers"):
        gate_names("p95_ms ** 2 < 1")
    with pytest.raises(SlmopsError, match="not a fleet metric"):
        gate_names("__import__('os') < 1")


def _w(dev, requests=10, errors=0, p95=200.0, probe=80.0, digest="sha256:new"):
    return Telemetry(device_id=dev, digest=digest, sent_at=0.0, window_s=1.0, requests=requests, errors=errors,
                     p50_ms=p95 / 2, p95_ms=p95, probe_score=probe)


def test_aggregate_weights_latency_by_requests():
    agg = aggregate([_w("a", 10, 1, 100.0, 70.0), _w("a", 30, 2, 200.0, 90.0), _w("b", 0, 0, 999.0, None)])
    assert agg["devices"] == 2 and agg["windows"] == 3 and agg["requests"] == 40
    assert agg["error_rate"] == pytest.approx(3 / 40)
    assert agg["p95_ms"] == pytest.approx(175.0)  # (10*100 + 30*200) / 40; the idle window has no weight
    assert agg["probe_score"] == pytest.approx(80.0)
    assert aggregate([])["requests"] is None and aggregate([])["probe_score"] is None


def test_gate_evaluates_with_numbers_and_reports_missing():
    wave = aggregate([_w("a", p95=300.0, probe=60.0)])
    base = aggregate([_w("b", p95=200.0, probe=80.0, digest="sha256:old")])
    expr = "p95_ms <= 1.2 * baseline.p95_ms and probe_score >= baseline.probe_score - 5"
    res = evaluate_gate(expr, wave, base)
    assert not res.passed and res.evaluated == "300 <= 1.2 * 200 and 60 >= 80 - 5" and not res.missing
    assert evaluate_gate("probe_score >= 50", wave, None).passed
    miss = evaluate_gate(expr, wave, None)
    assert not miss.passed and miss.missing == ["baseline.p95_ms", "baseline.probe_score"]
    assert "?" in miss.evaluated


def test_simulator_fault_and_label_grammar():
    f = parse_fault("probe:-20@zone=b/sha256:abcd")
    assert (f.kind, f.value, f.select, f.digest) == ("probe", -20.0, {"zone": "b"}, "abcd")
    assert f.hits_version("sha256:abcdef", "sha256:0000") and not f.hits_version("sha256:ffff", None)
    g = parse_fault("latency:1.5")
    assert g.hits_version("sha256:new", "sha256:old") and not g.hits_version("sha256:old", "sha256:old")
    for bad in ("slow:2", "offline:2", "probe:x", "latency:0", "probe:-1/xyz"):
        with pytest.raises(SlmopsError):
            parse_fault(bad)
    assert parse_labels("zone=a|a|b,hw=x|y") == {"zone": ["a", "a", "b"], "hw": ["x", "y"]}
    with pytest.raises(SlmopsError):
        parse_labels("zone")
