"""``slmops bench`` and ``slmops validate`` against real servers on the tiny model: a child
``slmops serve`` started for a store reference, or an in-process uvicorn reached by URL."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from slmops.errors import SlmopsError
from slmops.ops.loadtest import BenchConfig, parse_levels, run_bench
from slmops.ops.validate import ValidateConfig, edge_cases, run_validate
from slmops.serve import ServeConfig, create_app
from slmops.serve.runner import BackgroundServer

QA = [("What is the capital of France?", "Paris"), ("Say hello", "Hello world!"), ("What is two plus two?", "Four")]


@pytest.fixture(scope="module")
def url_server(serve_store):
    with BackgroundServer(create_app(serve_store, ServeConfig(models=("tiny",), threads=1))) as srv:
        yield srv


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in QA), encoding="utf-8")
    return path


def slmops(bin_path: Path, store, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLMOPS_HOME": str(store.home)}
    return subprocess.run([str(bin_path), *args], capture_output=True, text=True, env=env, timeout=300)


def test_bench_serves_a_store_reference_itself_and_writes_json_markdown_and_svg(slmops_bin, serve_store, tmp_path):
    out = tmp_path / "bench"
    r = slmops(slmops_bin, serve_store, "bench", "tiny", "--concurrency", "1,3", "--max-tokens", "12",
               "--threads", "1", "--output", str(out), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["served_by_us"] and report["model"] == "tiny"
    one, three = report["levels"]
    assert (one["concurrency"], one["requests"], three["concurrency"], three["requests"]) == (1, 2, 3, 6)
    for lv in (one, three):
        assert lv["errors"] == 0 and lv["completion_tokens"] > 0 and lv["tokens_per_second"] > 0
        assert lv["ttft_p50_ms"] > 0 and lv["latency_p50_ms"] <= lv["latency_p95_ms"] <= lv["latency_p99_ms"]
        assert lv["server_peak_rss_mb"] > 50 and lv["server_cpu_percent"] > 0  # the child server, measured
    assert json.loads((out / "bench.json").read_text())["levels"] == report["levels"]
    assert "| 3 | 6 | 0 |" in (out / "bench.md").read_text()
    svg = (out / "bench.svg").read_text()
    assert svg.startswith("<svg") and "c=3" in svg and "aggregate tokens/s" in svg


def test_bench_against_a_url_names_the_model_and_measures_no_server_process(url_server):
    report = run_bench(BenchConfig(url_server.url + "/v1", concurrency=(2,), max_tokens=8, warmup=1))
    assert report.model == "tiny" and not report.served_by_us  # the server's first listed model
    [level] = report.levels
    assert level.requests == 4 and level.errors == 0 and level.completion_tokens > 0
    assert level.server_peak_rss_mb is None and level.server_cpu_percent is None
    assert "| 2 | 4 | 0 |" in report.markdown()


def test_bench_settings_and_targets_fail_clearly(url_server, serve_store):
    with pytest.raises(SlmopsError, match="not a list of positive integers"):
        parse_levels("1,x")
    with pytest.raises(SlmopsError, match="concurrency levels must be >= 1.*max_tokens must be >= 1"):
        run_bench(BenchConfig("tiny", concurrency=(0,), max_tokens=0))
    with pytest.raises(SlmopsError, match="status 404"):
        run_bench(BenchConfig(url_server.url + "/v1#missing", concurrency=(1,)))
    with pytest.raises(SlmopsError, match="Unknown model"):
        run_bench(BenchConfig("no-such-model", concurrency=(1,)), store=serve_store)


def test_validate_against_a_url_passes_and_fails_on_the_format(url_server, qa_file):
    cfg = dict(target=url_server.url + "/v1#tiny", eval=str(qa_file), min_score=0.0, regex=".*",
               long_input_words=40, latency_requests=3, max_latency_ratio=50)  # fmt: skip
    report = run_validate(ValidateConfig(**cfg))
    by = {c.name: c for c in report.checks}
    assert report.passed and [c.status for c in report.checks] == ["pass", "pass", "pass", "pass", "skip"]
    assert by["task_metric"].figure.startswith("token_f1 ") and by["task_metric"].threshold == ">= 0"
    assert by["edge_cases"].figure == f"0/{len(edge_cases('tiny'))} answered 5xx"
    statuses = by["edge_cases"].values
    assert statuses["malformed JSON"] == statuses["empty messages"] == statuses["unenforceable JSON schema"] == 400
    assert statuses["tool message without a call"] == 400 and statuses["unknown model"] == 404
    assert statuses["empty text prompt"] == 200  # completions are not templated: an empty prompt starts from BOS
    assert statuses["control characters"] == statuses["unusual Unicode"] == 200
    assert statuses["normal request after"] == 200 and "400" in by["edge_cases"].detail
    assert by["memory_soak"].status == "skip"  # a URL's process is not ours to measure

    failing = run_validate(ValidateConfig(**{**cfg, "regex": "ZZZ", "min_score": 0.99}))
    assert not failing.passed
    assert [c.status for c in failing.checks][:2] == ["fail", "fail"]
    assert "0/3 match regex ZZZ" in failing.checks[1].detail
    assert "FAILED" in failing.markdown() and "| output_format | fail | 0.0% | >= 100% |" in failing.markdown()


def test_validate_settings_fail_before_any_work(qa_file, tmp_path):
    with pytest.raises(SlmopsError, match="soak_requests must be >= 1.*not both"):
        run_validate(ValidateConfig("tiny", str(qa_file), soak_requests=0, regex="x", json_schema="s.json"))
    with pytest.raises(SlmopsError, match="not a valid regular expression"):
        run_validate(ValidateConfig("tiny", str(qa_file), regex="("))
    with pytest.raises(SlmopsError, match="does not exist|not found|No such"):
        run_validate(ValidateConfig("tiny", str(tmp_path / "missing.jsonl")))


def test_validate_cli_soaks_its_own_server_and_exits_1_on_failure(slmops_bin, serve_store, url_server, qa_file):
    ok = slmops(slmops_bin, serve_store, "validate", "tiny", "--eval", str(qa_file), "--min-score", "0",
                "--soak-requests", "30", "--warmup", "5", "--long-input-words", "40", "--max-latency-ratio", "50",
                "--threads", "1", "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    soak = next(c for c in report["checks"] if c["name"] == "memory_soak")
    assert report["passed"] and report["served_by_us"] and soak["status"] == "pass"
    assert soak["figure"].endswith("%") and "over 30 requests" in soak["detail"]

    bad = slmops(slmops_bin, serve_store, "validate", url_server.url + "/v1#tiny", "--eval", str(qa_file),
                 "--min-score", "0", "--regex", "ZZZ", "--long-input-words", "40")  # fmt: skip
    assert bad.returncode == 1
    assert "output_format" in bad.stdout and "FAILED" in bad.stdout


def test_validate_json_schema_asks_with_response_format_so_even_a_random_model_passes(url_server, qa_file, tmp_path):
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}))
    cfg = dict(target=url_server.url + "/v1#tiny", eval=str(qa_file), min_score=0.0, json_schema=str(schema),
               long_input_words=40, latency_requests=3, max_latency_ratio=50)  # fmt: skip
    check = {c.name: c for c in run_validate(ValidateConfig(**cfg)).checks}["output_format"]
    assert check.status == "pass" and check.figure == "100.0%", check
