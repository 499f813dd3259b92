"""Reports: one self-contained HTML file with its SVG charts, Markdown, and the JSON schema."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

from slmops.evaluate.bootstrap import bootstrap_ci
from slmops.evaluate.compare import compare_models
from slmops.evaluate.metrics import confusion_matrix
from slmops.evaluate.perf import PerfStats
from slmops.evaluate.report import render_html, render_markdown, side_by_side, write_reports
from slmops.evaluate.results import SCHEMA_VERSION, EvalReport, ModelResult
from slmops.evaluate.tasks import EvalItem

LABELS = ("billing", "technical", "other")
GOLDS = ["billing", "technical", "other", "billing"]


def _model(ref: str, preds: list[str | None], p50: float, size: int) -> ModelResult:
    per = [float(p == g) for p, g in zip(preds, GOLDS, strict=True)]
    perf = PerfStats(1.0, 4, 4, 40, 20, 1.0, 20.0, 4, p50, p50 * 1.2, 5.0, 30.0, 300.0, 300.0 + size / 2**20,
                     size / 2**20)
    return ModelResult(
        ref, "ok", label=ref, size_bytes=size, parameters=size // 4, metrics={"accuracy": sum(per) / 4},
        intervals={"accuracy": bootstrap_ci(per, seed=0)}, confusion=confusion_matrix(preds, GOLDS, LABELS),
        counts={"empty_output": 0, "invalid_prediction": preds.count(None), "no_number": 0, "generation_error": 0},
        perf=perf, per_record={"accuracy": per}, outputs=[p or "??" for p in preds], predictions=preds,
        flags=[None if p else "invalid_prediction" for p in preds],
    )


def make_report() -> EvalReport:
    items = [EvalItem(i, f"t.jsonl, line {i + 1}", None, g, f"ticket {i}") for i, g in enumerate(GOLDS)]
    items.append(EvalItem(4, "t.jsonl, line 5", None, None, "q", "missing_gold", "no 'answer' field"))
    models = [
        _model("base<&>", ["billing", "technical", "other", "billing"], 200.0, 400 * 2**20),
        _model("small", ["billing", "other", None, "billing"], 50.0, 100 * 2**20),
        ModelResult("broken", "failed", error="It exploded <badly>", label="broken"),
    ]
    return EvalReport(
        task="classification", dataset="t", data="t.jsonl", created_at="2026-01-01T00:00:00+00:00",
        primary_metric="accuracy", metrics=("accuracy",), labels=LABELS, config={"warnings": []},
        items=items, models=models, comparison=compare_models(models, "accuracy"),
    )


def test_html_is_one_self_contained_file_with_its_charts(tmp_path: Path):
    report = write_reports(make_report(), tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["report.html", "report.json", "report.md"]
    html = Path(report.report_files["html"]).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 4  # scatter, size bars, 2 confusion maps
    assert html.count('class="point"') == 2 and html.count('class="bar"') == 2
    assert html.count('class="cell"') == 2 * len(LABELS) * (len(LABELS) + 1)
    assert "<script" not in html and "<link" not in html and not re.search(r"(src|href)=", html)
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"] * 4  # only the SVG namespace
    assert "base&lt;&amp;&gt;" in html and "<&>" not in html.split("<style>")[1]  # labels are escaped
    assert "It exploded &lt;badly&gt;" in html
    for chart in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ElementTree.fromstring(chart)  # each chart is well-formed XML


def test_side_by_side_rows_and_percentages():
    headers, rows = side_by_side(make_report())
    assert headers == ["base<&> (baseline)", "small", "broken"]
    by_name = {r.name: r.cells for r in rows}
    assert by_name["accuracy *"][0].startswith("1.000") and by_name["accuracy *"][1].startswith("0.500")
    assert by_name["quality retention"][:2] == ["100.0%", "50.0%"]
    assert by_name["inference time reduction"][1] == "+75.0%"
    assert by_name["memory reduction"][1] == "+75.0%" and by_name["size reduction"][1] == "+75.0%"
    assert by_name["invalid prediction"] == ["0", "1", "-"]
    assert by_name["status"][2].startswith("failed: It exploded")


def test_markdown_has_the_table_and_confusion_matrices():
    md = render_markdown(make_report())
    assert "# Evaluation: classification on t" in md and "4 of 5 records scored (not scored: 1 missing gold)" in md
    assert "| accuracy * |" in md and md.count("## Confusion matrix") == 2
    assert "| billing | 2 | 0 | 0 | 0 |" in md


def test_json_schema_keys_are_stable():
    data = json.loads(json.dumps(make_report().to_dict(), default=str))
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert set(data) == {"schema_version", "kind", "created_at", "task", "dataset", "data", "store_key",
                         "primary_metric", "metrics", "labels", "config", "records", "record_issues", "models",
                         "comparison", "report_files"}
    assert set(data["models"][0]) == {"ref", "status", "error", "label", "store_ref", "format", "size_bytes",
                                      "parameters", "metrics", "ci", "confusion", "counts", "perf", "perplexity",
                                      "perplexity_error", "judge", "records"}
    assert set(data["models"][0]["perf"]) >= {"latency_p50_ms", "latency_p95_ms", "tokens_per_second",
                                              "peak_rss_mb", "memory_delta_mb", "load_seconds"}
    assert set(data["models"][0]["records"][0]) == {"index", "gold", "output", "prediction", "flag", "scores"}
    assert set(data["comparison"]["rows"][1]) >= {"quality_delta", "quality_delta_ci", "quality_retention_pct",
                                                  "inference_time_reduction_pct", "memory_reduction_pct",
                                                  "size_reduction_pct", "significant"}
    assert data["records"] == {"total": 5, "scored": 4, "invalid_input": 0, "missing_gold": 1,
                               "gold_not_in_labels": 0, "gold_not_a_number": 0}


def test_html_without_sizes_or_confusion_still_renders():
    report = make_report()
    bare = [ModelResult("x", "ok", label="x", metrics={"accuracy": 0.5})]
    html = render_html(replace(report, models=bare, comparison=compare_models(bare, "accuracy")))
    assert html.count("<svg") == 1 and "no data" in html
