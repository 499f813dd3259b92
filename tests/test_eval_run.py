"""End to end on tiny random models: several models, robustness counts, judge, store, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from slmops.engines.base import Engine, GenerationParams, GenerationRequest, GenerationResult, StreamChunk
from slmops.errors import DataError, EngineError, SlmopsError
from slmops.evaluate import SCHEMA_VERSION, EvalConfig, evaluate
from slmops.evaluate.builtin import BUILTIN_DATASETS, builtin_dataset, resolve_data
from slmops.evaluate.model import generate_robust
from tests.tiny import build_model

LABELS = "billing,technical,account,other"
FAST = {"max_tokens": 4, "latency_samples": 2, "threads": 1, "batch_size": 4}

RECORDS = [
    {"prompt": "Ticket: I was charged twice this month.", "answer": "billing"},
    {"prompt": "Ticket: the app crashes on start.", "answer": "Technical"},
    {"prompt": "Ticket: please reset my password."},  # no gold answer
    {"prompt": "Ticket: do you sell gift cards?", "answer": "sales"},  # gold outside the label set
    {"answer": "billing"},  # no input
    {"messages": [{"role": "user", "content": "Ticket: where is your office?"}], "answer": "other"},
]


class FakeEngine(Engine):
    """Answers every request with a fixed reply; fails on prompts containing 'BOOM'."""

    name = "fake"

    def __init__(self, reply: str = "Score: 8") -> None:
        self.reply = reply

    def _text(self, r: GenerationRequest) -> str:
        return r.prompt or " ".join(m.content for m in r.messages or ())

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if any("BOOM" in self._text(r) for r in requests):
            raise EngineError("the fake engine exploded")
        return [GenerationResult(self.reply, 5, 3, "stop", 0.01) for _ in requests]

    def stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        yield StreamChunk(self.reply)
        yield StreamChunk("", finish_reason="stop", prompt_tokens=5, completion_tokens=3)

    def count_tokens(self, request: GenerationRequest) -> int:
        return 5


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-b") / "tiny-llama-b", seed=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tickets.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tiny_b: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """One evaluation shared by the tests below: a path, a store model and a missing path."""
    from slmops.models.artifacts import import_model
    from slmops.models.store import ModelStore

    root = tmp_path_factory.mktemp("run")
    store = ModelStore(root / "home")
    import_model(store, tiny_b, "tiny-b")
    ppl = root / "ppl.txt"
    ppl.write_text("The capital of France is Paris. Hello world! How are you today?", encoding="utf-8")
    refs = [str(tiny_model_dir), "tiny-b", str(root / "no-such-model")]
    config = EvalConfig(refs, data_file, "classification", labels=LABELS, perplexity=ppl,
                        report_dir=root / "reports", **FAST)
    report = evaluate(config, store=store)
    return report, store, refs


def test_every_model_is_reported_and_a_missing_one_does_not_abort_the_others(run):
    report, _, refs = run
    assert [m.status for m in report.models] == ["ok", "ok", "failed"]
    assert "does not exist" in report.models[2].error
    assert report.comparison.baseline == refs[0]
    assert [r.ref for r in report.comparison.rows] == refs[:2]


def test_record_problems_are_counted_not_fatal(run):
    report, _, _ = run
    assert report.record_counts() == {"total": 6, "scored": 3, "invalid_input": 1, "missing_gold": 1,
                                      "gold_not_in_labels": 1, "gold_not_a_number": 0}
    issues = {i["issue"]: i for i in report.to_dict()["record_issues"]}
    assert "line 3" in issues["missing_gold"]["where"] and "'sales'" in issues["gold_not_in_labels"]["detail"]
    for m in report.models[:2]:
        assert len(m.outputs) == 3 and len(m.flags) == 3
        flagged = sum(m.counts.values())
        assert flagged == sum(f is not None for f in m.flags) <= 3
        assert m.counts["generation_error"] == 0


def test_scores_performance_and_size(run, tiny_model_dir):
    report, _, _ = run
    a, b = report.models[:2]
    for m in (a, b):
        assert set(m.metrics) == {"accuracy", "macro_f1"} and 0 <= m.metrics["accuracy"] <= 1
        assert m.intervals["accuracy"].low <= m.metrics["accuracy"] <= m.intervals["accuracy"].high
        assert m.confusion is not None and sum(map(sum, m.confusion.matrix)) == 3
        p = m.perf
        assert p.requests == 3 and p.latency_samples == 2 and p.latency_p50_ms <= p.latency_p95_ms
        assert p.completion_tokens > 0 and p.tokens_per_second > 0
        assert p.peak_rss_mb >= p.rss_before_mb and p.memory_delta_mb >= 0
        assert m.size_bytes > 0 and m.parameters and m.parameters > 1000
        assert m.perplexity is not None and m.perplexity.perplexity > 1
    assert a.label == str(tiny_model_dir.resolve()) and a.store_ref is None
    assert b.store_ref == "tiny-b:1" and b.format == "hf"


def test_results_are_recorded_against_the_store_model(run):
    report, store, _ = run
    rec = store.get("tiny-b").metrics[report.store_key]
    assert report.store_key == "eval.classification.tickets"
    assert rec["primary_metric"] == "accuracy" and rec["score"] == report.models[1].metrics["accuracy"]
    assert rec["records"] == 3 and rec["latency_p50_ms"] == report.models[1].perf.latency_p50_ms
    assert Path(rec["report"]).name == "report.json" and Path(rec["report"]).exists()


def test_reports_written_with_the_stable_schema(run):
    report, _, _ = run
    files = {k: Path(v) for k, v in report.report_files.items()}
    assert set(files) == {"json", "markdown", "html"} and all(f.exists() for f in files.values())
    data = json.loads(files["json"].read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == "slmops.eval"
    assert data["models"][1]["records"][0]["gold"] == "billing"
    assert data["models"][2]["status"] == "failed" and data["models"][2]["records"] == []


def test_judge_scores_sit_beside_the_metrics(tiny_model_dir, data_file, store, monkeypatch):
    import slmops.evaluate.run as run_mod

    real_open = run_mod.open_engine

    def fake_open(ref, *args, **kwargs):
        return FakeEngine("Score: 8/10") if ref == "fake-judge" else real_open(ref, *args, **kwargs)

    monkeypatch.setattr(run_mod, "open_engine", fake_open)
    config = EvalConfig([str(tiny_model_dir)], data_file, "classification", labels=LABELS, judge="fake-judge", **FAST)
    report = evaluate(config, store=store)
    m = report.models[0]
    assert m.judge is not None and m.judge.mean == 8.0 and m.judge.unparsed == 0 and len(m.judge.scores) == 3
    assert "accuracy" in m.metrics  # never instead of the automatic metrics
    assert report.to_dict()["models"][0]["records"][0]["judge_score"] == 8.0
    config = EvalConfig([str(tiny_model_dir)], data_file, "classification", labels=LABELS,
                        judge=str(tiny_model_dir.parent / "missing-judge"), **FAST)
    broken = evaluate(config, store=store)
    assert broken.models[0].ok and broken.models[0].judge is None
    assert "could not be opened" in broken.config["warnings"][0]


def test_a_failing_request_is_retried_alone_and_counted():
    params = GenerationParams(max_tokens=2)
    reqs = [GenerationRequest(prompt=p, params=params) for p in ("fine", "BOOM", "fine too")]
    outputs, _, completion = generate_robust(FakeEngine("billing"), reqs, 8, lambda _n: None)
    assert outputs == ["billing", None, "billing"] and completion == 6


def test_labels_inferred_from_gold_answers_and_limit(tiny_model_dir, data_file, store):
    config = EvalConfig([str(tiny_model_dir)], data_file, "classification", limit=2, record=False, **FAST)
    report = evaluate(config, store=store)
    assert report.labels == ("billing", "Technical") and report.record_counts()["total"] == 2


def test_nothing_scorable_is_a_clear_data_error(tiny_model_dir, data_file, store):
    with pytest.raises(DataError) as err:
        evaluate(EvalConfig([str(tiny_model_dir)], data_file, "qa", target_field="label", **FAST), store=store)
    assert str(data_file) in str(err.value) and "--target-field" in str(err.value)
    with pytest.raises(SlmopsError, match="Unknown task"):
        evaluate(EvalConfig([str(tiny_model_dir)], data_file, "poetry"), store=store)
    with pytest.raises(SlmopsError, match="Unknown metric"):
        evaluate(EvalConfig([str(tiny_model_dir)], data_file, "generation", metrics=["rouge"]), store=store)
    with pytest.raises(SlmopsError, match="batch_size"):
        evaluate(EvalConfig([str(tiny_model_dir)], data_file, "qa", batch_size=0), store=store)


def test_builtin_support_tickets_dataset():
    path, name = resolve_data("builtin:support-tickets")
    assert path == builtin_dataset("support-tickets") and name == "support-tickets"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    spec = BUILTIN_DATASETS["support-tickets"]
    assert len(rows) == 60 and len({r["prompt"] for r in rows}) == 60
    assert {r["answer"] for r in rows} == set(spec.labels)
    assert all(sum(r["answer"] == lab for r in rows) >= 10 for lab in spec.labels)
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"slmops.evaluate" = ["datasets/*.jsonl"]' in pyproject
    with pytest.raises(DataError, match="Unknown built-in"):
        builtin_dataset("nope")


def _app() -> typer.Typer:
    from slmops.cli.evaluate import eval_cmd

    app = typer.Typer()
    app.command("eval")(eval_cmd)
    app.command("noop")(lambda: None)  # two commands, so `eval` stays a subcommand
    return app


def test_cli_json_and_table(tiny_model_dir, tiny_b, data_file, home, tmp_path):
    args = ["eval", str(tiny_model_dir), str(tiny_b), "--data", str(data_file), "--task", "classification",
            "--labels", LABELS, "--max-tokens", "3", "--latency-samples", "1", "--threads", "1",
            "--report-dir", str(tmp_path / "r")]
    res = CliRunner().invoke(_app(), [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema_version"] == SCHEMA_VERSION and [m["status"] for m in data["models"]] == ["ok", "ok"]
    assert (tmp_path / "r" / "report.html").exists()
    table = CliRunner().invoke(_app(), args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for text in ("(baseline)", "accuracy *", "latency p50 / p95", "quality retention", "inference time reduction",
                 "memory reduction", "size on disk"):
        assert text in table.stdout


def test_cli_all_models_failing_is_an_error(data_file, home, tmp_path):
    res = CliRunner().invoke(_app(), ["eval", str(tmp_path / "nope"), "--data", str(data_file), "--task", "qa",
                                      "--report-dir", str(tmp_path / "r")])
    assert isinstance(res.exception, SlmopsError) and "No model could be evaluated" in str(res.exception)
    help_text = CliRunner().invoke(_app(), ["eval", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Example: slmops eval" in help_text
