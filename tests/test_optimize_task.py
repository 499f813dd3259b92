"""The task metric of a conversion: the test set comes from --eval-data or the source's lineage
(an `slmops eval` result in the store, a fine-tune's eval data, nearest record first), both
models are scored on it, and the delta is stored and printed; no test set means ppl only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.optimize import OptimizeConfig, optimize
from slmops.optimize import task_check as tc


@pytest.fixture()
def tiny_store(store, tiny_model_dir: Path):
    import_model(store, tiny_model_dir, "tiny")
    return store


@pytest.fixture()
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"prompt": f"Question {i}: what comes after {i}?", "answer": str(i + 1)} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_no_test_set_in_lineage_means_perplexity_only(tiny_store):
    assert tc.from_lineage(tiny_store.get("tiny"), tiny_store) is None
    result = optimize(OptimizeConfig("tiny", to="gguf", quant="q8_0"), store=tiny_store)
    assert result.quality.task is None and result.record.metrics["optimize"]["task"] is None


def test_recorded_eval_result_is_found_through_the_parents(tiny_store, qa_file: Path, tmp_path: Path):
    old, new = tmp_path / "old.jsonl", qa_file
    old.write_text(qa_file.read_text(), encoding="utf-8")
    tiny_store.update_metrics("tiny", {
        "eval.qa.old": {"data": str(old), "evaluated_at": "2026-01-01T00:00:00+00:00"},
        "eval.qa.qa": {"data": str(new), "evaluated_at": "2026-02-01T00:00:00+00:00"},
        "eval.qa.gone": {"data": str(tmp_path / "deleted.jsonl"), "evaluated_at": "2026-03-01T00:00:00+00:00"},
    })
    check = tc.from_lineage(tiny_store.get("tiny"), tiny_store)
    assert check == tc.TaskCheck(str(new), "qa", "eval.qa.qa of tiny:1")  # latest whose file still exists
    merged = optimize(
        OptimizeConfig("tiny", to="gguf", quant="f16", output="child", no_task_check=True), store=tiny_store
    )
    assert merged.quality.task is None  # --no-task-check
    assert tc.from_lineage(tiny_store.get("child"), tiny_store) == check  # found on the parent


def test_finetune_eval_data_is_scored_with_the_distillation_task(
    tiny_store, qa_file: Path, tiny_model_dir: Path, tmp_path: Path
):
    import shutil

    staged = tmp_path / "student"
    shutil.copytree(tiny_model_dir, staged)
    recipe = {"kind": "finetune", "eval_data": {str(qa_file): "sha"}, "distill": {"task": "qa"}}
    tiny_store.add(staged, "student", "hf", parents=["tiny:1"], recipe=recipe)
    assert tc.from_lineage(tiny_store.get("student"), tiny_store) == tc.TaskCheck(
        str(qa_file), "qa", "eval_data of student:1 (finetune)"
    )
    recipe = {"kind": "finetune", "eval_data": {str(qa_file): "sha"}}  # no task named: generic ROUGE-L
    shutil.copytree(tiny_model_dir, staged, dirs_exist_ok=True)  # add() leaves an empty folder behind
    tiny_store.add(staged, "plain", "hf", recipe=recipe)
    assert tc.from_lineage(tiny_store.get("plain"), tiny_store).task == "generation"


def test_explicit_eval_data_measures_source_and_result(tiny_store, qa_file: Path):
    result = optimize(
        OptimizeConfig("tiny", to="onnx", precision="fp32", eval_data=str(qa_file), eval_task="qa"), store=tiny_store
    )
    t = result.quality.task
    assert (t.task, t.metric, t.records, t.origin, t.error) == ("qa", "token_f1", 4, "--eval-data", None)
    assert t.score == t.source_score and t.delta_points == 0.0  # fp32 ONNX answers exactly like torch
    stored = result.record.metrics["optimize"]["task"]
    assert stored["delta_points"] == 0.0 and stored["dataset"] == "qa" and stored["data"] == str(qa_file)


def test_builtin_test_set_knows_its_task():
    assert tc.explicit("builtin:support-tickets", None).task == "classification"


@pytest.mark.parametrize(
    ("data", "task", "message"),
    [
        ("builtin:nope", None, "unknown built-in test set"),
        ("/no/such/file.jsonl", "qa", "does not exist"),
        (__file__, None, "needs --eval-task"),
        (__file__, "no-such-task", "no-such-task"),
    ],
)
def test_bad_eval_options_are_clear(data: str, task: str | None, message: str):
    with pytest.raises(SlmopsError, match=message):
        tc.explicit(data, task)


def test_eval_task_without_eval_data_is_refused(tiny_store):
    with pytest.raises(SlmopsError, match="--eval-task applies to --eval-data"):
        optimize(OptimizeConfig("tiny", to="gguf", eval_task="qa"), store=tiny_store)


def test_cli_prints_the_task_row(tiny_store, qa_file: Path):
    import typer
    from typer.testing import CliRunner

    from slmops.cli.optimize import optimize as optimize_cmd

    app = typer.Typer()
    app.command()(optimize_cmd)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the command name
    args = ["optimize", "tiny", "--to", "gguf", "--quant", "f16", "--eval-data", str(qa_file), "--eval-task", "qa"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "token_f1 (qa, 4 records)" in out.stdout and "pts" in out.stdout
    bad = CliRunner().invoke(app, ["optimize", "tiny", "--to", "gguf", "--eval-data", str(qa_file)])
    assert bad.exit_code != 0 and "needs --eval-task" in str(bad.exception or bad.output)
