"""`slmops distill run` end to end on tiny models: prune, generate, train, evaluate; the built-in task data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.distill.recipes import DEFAULT_RECIPES
from slmops.distill.run import DistillRunConfig, run_distill
from slmops.errors import SlmopsError
from slmops.evaluate.builtin import BUILTIN_DATASETS, builtin_dataset
from slmops.evaluate.tasks import LABEL_INSTRUCTION
from tests.test_distill_generate import TICKETS, write_rows

LABELS = ("billing", "technical", "account")


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A store holding a tiny teacher that has learned to answer the tickets with their label."""
    from slmops.models.store import ModelStore
    from slmops.train import load_config, run

    home = tmp_path_factory.mktemp("distill-run-home")
    store = ModelStore(home)
    instruction = LABEL_INSTRUCTION.format(labels=", ".join(LABELS))
    system = DEFAULT_RECIPES["classification"].system  # the recipe's system prompt, ticket, instruction
    rows = [{"messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"{r['prompt']}\n\n{instruction}"},
                          {"role": "assistant", "content": r["answer"]}]} for r in TICKETS] * 4
    data = write_rows(home / "teach.jsonl", rows)
    config = load_config(None, {"model": str(tiny_model_dir), "data": [data], "output": "teacher", "method": "full",
                                "max_steps": 60, "lr": 5e-3, "batch_size": 4, "packing": False})
    run(config, store=store)
    return store


def test_distill_run_prunes_generates_trains_and_reports(teacher_store, tmp_path: Path):
    data = write_rows(tmp_path / "prompts.jsonl", TICKETS)
    config = DistillRunConfig(teacher="teacher", data=str(data), test=str(data), labels=",".join(LABELS),
                              student_layers="1", output="tiny-distilled", max_steps=3, batch_size=2,
                              latency_samples=1, threads=1, report_dir=tmp_path / "report")
    events: Counter[str] = Counter()
    result = run_distill(config, store=teacher_store, progress=lambda stage, event: events.update([stage]))

    # the student was pruned from the teacher, then distilled; lineage links all three
    assert result.pruned is not None and result.pruned.kept in ([0], [1])
    assert result.student == result.pruned.record.ref and result.pruned.record.parents == ["teacher:1"]
    assert result.train.record.parents == [result.student] and result.distilled == result.train.record.ref
    assert result.train.lineage["teacher"] == "teacher"
    assert result.pruned.calibration["source"] == "builtin:held-out-text"  # general text, not the task prompts
    # stage 1 answered every prompt, and the accepted answers are what the student trained on
    assert result.generate.inputs == 4 and result.generate.counts["accepted"] >= 1
    assert result.train.finetune.steps == 3
    # the table: teacher, un-distilled student, distilled student, with the percentages
    report = result.report
    assert [m.ref for m in report.eval.models] == ["teacher", result.student, result.distilled]
    assert [s.ref for s in report.students] == [result.student, result.distilled]
    for s in report.students:
        assert s.ok and s.size_reduction_pct is not None and s.size_reduction_pct > 30
        assert s.inference_time_reduction_pct is not None and s.memory_reduction_pct is not None
    assert set(report.eval.report_files) == {"json", "markdown", "html"}
    assert all(Path(f).exists() for f in report.eval.report_files.values())
    assert list(result.timings) == ["prune", "generate", "train", "evaluate"]
    assert {"prune", "generate", "train", "evaluate"} <= set(events)
    assert json.loads(json.dumps(result.to_dict(), default=str))["distilled"] == result.distilled

    # a rerun reuses the teacher's saved answers (stage 1 is resumable) and a given student skips pruning
    again = run_distill(
        DistillRunConfig(teacher="teacher", data=str(data), test=str(data), labels=",".join(LABELS),
                         student=result.student, student_layers=None, max_steps=1, batch_size=2, latency_samples=0,
                         test_limit=2, threads=1, report_dir=tmp_path / "report2"),
        store=teacher_store)
    assert again.pruned is None and again.generate.generated == 0 and again.generate.resumed == 4
    assert "prune" not in again.timings


def test_bad_options_are_reported_together(teacher_store):
    with pytest.raises(SlmopsError) as err:
        run_distill(DistillRunConfig(student="x", student_layers="0", max_steps=0, output="../bad"),
                    store=teacher_store)
    msg = str(err.value)
    for part in ("either as a model reference", "--student-layers must be a layer count", "--max-steps must be >= 1",
                 "--output name"):
        assert part in msg
    with pytest.raises(SlmopsError, match="Unknown built-in dataset"):
        run_distill(DistillRunConfig(test="builtin:nope"), store=teacher_store)


def test_cli_run_help_and_one_line_error(home: Path):
    from slmops.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["distill", "run", "--help"])
    assert out.exit_code == 0 and "Example: slmops distill run" in out.stdout
    bad = runner.invoke(app, ["distill", "run", "--student", "a", "--student-layers", "3"])
    assert bad.exit_code != 0 and "not both" in str(bad.exception or bad.output)


def test_builtin_support_language_splits():
    train = [json.loads(x) for x in builtin_dataset("support-language-train").read_text().splitlines()]
    test = [json.loads(x) for x in builtin_dataset("support-language-test").read_text().splitlines()]
    labels = set(BUILTIN_DATASETS["support-language-test"].labels)
    assert len(train) == 225 and len(test) == 75
    assert Counter(r["answer"] for r in test) == dict.fromkeys(labels, 25)
    assert {r["answer"] for r in train} == labels
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}  # held out
    instruction = "Which language is this support ticket written in?"  # teacher and student both see it
    assert all(r["prompt"].startswith(instruction) for r in train + test)


def test_generator_script_reproduces_the_shipped_files():
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_support_language.py"
    spec = importlib.util.spec_from_file_location("make_support_language", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, test = module.build()
    for name, records in (("train", train), ("test", test)):
        shipped = builtin_dataset(f"support-language-{name}").read_text(encoding="utf-8")
        assert shipped == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_builtin_tasks_keep_their_declared_label_order():
    from slmops.distill.run import builtin_labels

    assert builtin_labels("builtin:support-language-test") == "english,french,spanish"
    assert builtin_labels("prompts.jsonl") is None and builtin_labels("builtin:nope") is None
