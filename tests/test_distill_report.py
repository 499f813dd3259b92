"""`slmops distill report`: the percentages users quote, from the evaluate module's comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.cli.distill import app
from slmops.distill.report import summarize
from slmops.evaluate.compare import compare_models
from slmops.evaluate.perf import PerfStats
from slmops.evaluate.results import EvalReport, ModelResult
from tests.test_distill_generate import TICKETS, write_rows
from tests.tiny import build_model


def _model(ref: str, accuracy: float, latency_ms: float, memory_mb: float, size: int) -> ModelResult:
    perf = PerfStats(1.0, 8, 10, 100, 50, 1.0, 50.0, 5, latency_ms, latency_ms, None, None, 100.0,
                     100.0 + memory_mb, memory_mb)
    return ModelResult(ref, "ok", label=ref, size_bytes=size, metrics={"accuracy": accuracy}, perf=perf)


def test_the_case_study_numbers() -> None:
    models = [_model("teacher", 0.80, 100.0, 500.0, 1000), _model("student", 0.74, 15.0, 25.0, 50),
              ModelResult("broken", "failed", error="no such model")]
    report = EvalReport("classification", "t", "t.jsonl", "now", "accuracy", ("accuracy",), (), {}, [], models,
                        compare_models(models, "accuracy"))
    student, broken = summarize(report, "teacher", ["student", "broken"])
    assert student.quality_retention_pct == pytest.approx(92.5)
    assert student.inference_time_reduction_pct == pytest.approx(85.0)
    assert student.memory_reduction_pct == pytest.approx(95.0)
    assert student.size_reduction_pct == pytest.approx(95.0)
    assert student.headline("accuracy") == (
        "student: inference time -85.0%, memory -95.0%, size -95.0%; keeps 92.5% of the teacher's accuracy")
    assert not broken.ok and "no such model" in broken.headline("accuracy")


@pytest.fixture(scope="module")
def small_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("student") / "tiny-student", layers=1, hidden=32)


def test_report_command_on_tiny_models(home: Path, tmp_path: Path, tiny_model_dir: Path, small_student: Path) -> None:
    data = write_rows(tmp_path / "test.jsonl", TICKETS[:3])
    args = ["report", "--teacher", str(tiny_model_dir), "--student", str(small_student), "--data", str(data),
            "--task", "classification", "--max-tokens", "2", "--latency-samples", "2", "--threads", "1",
            "--report-dir", str(tmp_path / "report")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    [student] = out["students"]
    assert out["teacher"] == str(tiny_model_dir) and out["primary_metric"] == "accuracy"
    assert student["ok"] and student["latency_ms"] > 0
    for key in ("inference_time_reduction_pct", "memory_reduction_pct", "size_reduction_pct"):
        assert key in student
    assert student["size_reduction_pct"] > 50  # 1 layer of 32 against 2 layers of 64
    assert isinstance(student["inference_time_reduction_pct"], float)
    assert Path(out["report_files"]["html"]).is_file()

    text = CliRunner().invoke(app, args, terminal_width=200)
    assert text.exit_code == 0, text.output
    assert "inference time" in text.stdout and "of the teacher's accuracy" in text.stdout


def test_teacher_and_students_must_differ(tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--teacher", "a", "--student", "a", "--data", "x.jsonl",
                                      "--task", "classification"])
    assert "must be different models" in str(result.exception)


def test_every_distill_command_help_ends_with_an_example() -> None:
    import typer

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert sorted(commands) == ["generate", "report", "run", "train"]
    for name, cmd in commands.items():
        assert (cmd.help or "").strip().splitlines()[-1].startswith(f"Example: slmops distill {name} ")
