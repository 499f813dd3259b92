"""Pipeline conveniences: ``run --dry-run`` (what would run, what comes from the cache),
the published JSON Schema (generated from the same models, committed, kept current) and
``--set steps.NAME.KEY=VALUE`` overrides beside ``--set VAR=VALUE``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from slmops.cli import app
from slmops.models.store import ModelStore
from slmops.pipeline import PipelineSpecError, example_pipeline, parse_spec, run_pipeline
from slmops.pipeline.run import plan_pipeline
from slmops.pipeline.schema import pipeline_schema, render

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "pipeline.schema.json"
GATES = """name: gates
vars: {floor: 0}
steps:
  first:
    kind: gate
    checks: ['1 > ${vars.floor}']
  second:
    kind: gate
    needs: [first]
    checks: ['2 > 1']
"""


def test_the_committed_schema_is_current_and_valid():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "docs/pipeline.schema.json is stale: run `python -m slmops.pipeline.schema > docs/pipeline.schema.json`")
    jsonschema.Draft202012Validator.check_schema(pipeline_schema())


def test_the_schema_accepts_the_shipped_pipelines_and_catches_typos():
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    for path in [example_pipeline("demo"), *Path("examples").glob("**/*.yaml")]:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "steps" in doc:
            assert not list(validator.iter_errors(doc)), path
    typo = {"name": "x", "steps": {"t": {"kind": "finetune", "model": "m", "data": "d.jsonl", "learning_rate": 1}}}
    assert any("learning_rate" in e.message for e in validator.iter_errors(typo))
    wrong = {"name": "x", "steps": {"g": {"kind": "gate", "checks": "1 > 0"}}}
    assert list(validator.iter_errors(wrong))
    ref = {"name": "x", "steps": {"t": {"kind": "finetune", "model": "m", "data": "d", "max_steps": "${vars.n}"}}}
    assert not list(validator.iter_errors(ref))


def test_set_overrides_a_step_setting_and_is_validated():
    spec = parse_spec(GATES, "p.yaml", {"steps.second.checks": ["3 > 2"], "floor": -1})
    assert spec.step("second").settings["checks"] == ["3 > 2"]
    assert spec.step("first").settings["checks"] == ["1 > -1"]
    with pytest.raises(PipelineSpecError, match="no step 'third'"):
        parse_spec(GATES, "p.yaml", {"steps.third.checks": ["1 > 0"]})
    with pytest.raises(PipelineSpecError, match="steps.first.chekcs: Extra inputs are not permitted"):
        parse_spec(GATES, "p.yaml", {"steps.first.chekcs": ["1 > 0"]})


def test_dry_run_says_what_would_run_and_what_is_cached(tmp_path: Path):
    store = ModelStore(tmp_path / "home")
    spec = parse_spec(GATES, "p.yaml")
    before = plan_pipeline(spec, store=store)
    assert [(p.name, p.status) for p in before] == [("first", "run"), ("second", "run")]
    assert before[1].reason == "after first runs"
    assert not (tmp_path / "home" / "pipelines" / "runs").exists()  # nothing ran, no run folder
    run_pipeline(spec, store=store, report_dir=None)
    assert [p.status for p in plan_pipeline(spec, store=store)] == ["cached", "cached"]
    forced = plan_pipeline(spec, store=store, force=("first",))
    assert [(p.status, p.reason) for p in forced] == [("run", "forced (--force)"), ("run", "after first runs")]
    changed = parse_spec(GATES, "p.yaml", {"steps.second.checks": ["5 > 1"]})
    assert [p.status for p in plan_pipeline(changed, store=store)] == ["cached", "run"]


def test_cli_dry_run_and_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    spec = tmp_path / "p.yaml"
    spec.write_text(GATES)
    res = CliRunner().invoke(app, ["run", str(spec), "--dry-run", "--json", "--set", "steps.second.cache=false"])
    assert res.exit_code == 0, res.output
    steps = json.loads(res.stdout)["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("first", "run"), ("second", "run")]
    table = CliRunner().invoke(app, ["run", str(spec), "--dry-run"], env={"COLUMNS": "150"})
    assert "0 of 2 steps from the cache, 2 to run; nothing was run." in table.stdout
    schema = CliRunner().invoke(app, ["run", "--schema"])
    assert schema.exit_code == 0 and json.loads(schema.stdout)["title"] == "slmops pipeline"
    none = CliRunner().invoke(app, ["run"])
    assert none.exit_code != 0 and "Give the pipeline file" in str(none.exception)
