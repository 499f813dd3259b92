"""Pipelines on tiny models: spec errors with lines, cached steps, a changed step re-running only
what depends on it, gates, resume after a kill, the whole life cycle end to end (remote teacher
over HTTP, prune, distill, int4 ONNX, evaluate, gate, register, serve), lineage, runs and the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slmops.cli import app
from slmops.errors import SlmopsError
from slmops.models.lineage import lineage
from slmops.models.store import ModelStore
from slmops.pipeline import GateFailed, example_pipeline, list_runs, load_spec, parse_spec, run_pipeline
from slmops.pipeline.spec import PipelineSpecError
from tests.test_remote_engine import FakeOpenAI, Handler

TRAIN = [
    ("I was charged twice this month.", "billing"),
    ("The app crashes when I log in.", "technical"),
    ("Please change my email address.", "account"),
    ("My invoice shows the wrong amount.", "billing"),
    ("The page shows error 500 after the update.", "technical"),
    ("How do I reset my password?", "account"),
    ("Refund my last payment please.", "billing"),
    ("Sync stopped working on my phone.", "technical"),
]
TEST = [
    ("Why was my card charged two times?", "billing"),
    ("The export button does nothing.", "technical"),
    ("I want to rename my account.", "account"),
    ("The receipt total is wrong.", "billing"),
]
GOLD = dict(TRAIN + TEST)


def _label(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    return next(label for prompt, label in GOLD.items() if prompt in text)


@pytest.fixture()
def teacher(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An OpenAI-compatible endpoint that answers every ticket with its gold team (the big teacher)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeOpenAI(reply=_label)  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1#big-teacher"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def tiny_store(store: ModelStore, tiny_model_dir: Path) -> ModelStore:
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        store.add(staged / "model", "tiny", "hf")
    return store


def _data(tmp_path: Path) -> tuple[Path, Path]:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in TRAIN))
    test.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in TEST))
    return train, test


TRAIN_ONLY = """
name: small
vars:
  steps: 3
steps:
  prune:
    kind: prune
    model: tiny
    keep_layers: 1
    calibration: {train}
  train:
    kind: finetune
    model: ${{steps.prune.model}}
    data: {train}
    text_template: "Ticket: {{prompt}} Team: {{answer}}"
    method: full
    max_steps: ${{vars.steps}}
    batch_size: 4
    save_interval: 1
    max_seq_len: 64
  check:
    kind: gate
    checks:
      - ${{steps.train.train_loss}} < 1000
"""


def _small(tmp_path: Path, **sets: Any):
    train, _ = _data(tmp_path)
    return parse_spec(TRAIN_ONLY.format(train=train), "small.yaml", sets)


# -- the spec ---------------------------------------------------------------------------------
def test_spec_errors_are_all_reported_with_their_lines() -> None:
    text = """name: ok
vars:
  n: 3
steps:
  train:
    kind: finetune
    model: tiny
    data: x.jsonl
    max_steps: ten
    bogus: 1
  opt:
    kind: optimize
    model: ${steps.nope.model}
    to: onnx
  gate:
    kind: gate
    checks: ["${steps.train.train_loss} + 1", "${vars.missing} > 1"]
  last:
    kind: frobnicate
"""
    with pytest.raises(PipelineSpecError) as info:
        parse_spec(text, "p.yaml")
    msg = str(info.value)
    assert "p.yaml:9: steps.train.max_steps: Input should be a valid integer" in msg and "(got 'ten')" in msg
    assert "p.yaml:10: steps.train.bogus: Extra inputs are not permitted" in msg
    assert "p.yaml:11: steps.opt: ${steps.nope...} must name an earlier step (earlier steps: train)" in msg
    assert "p.yaml:17: steps.gate.checks.0:" in msg and "is not a comparison" in msg
    assert "unknown variable ${vars.missing} (defined: n)" in msg
    assert "p.yaml:19: steps.last.kind: unknown step kind 'frobnicate'" in msg
    with pytest.raises(PipelineSpecError, match=r"p.yaml:2: not valid YAML"):
        parse_spec("name: x\n  steps: [\n", "p.yaml")
    with pytest.raises(PipelineSpecError, match="--set names unknown variables: nope"):
        parse_spec("name: x\nvars: {a: 1}\nsteps:\n  g: {kind: gate, checks: ['1 > 0']}\n", "p.yaml", {"nope": 1})


def test_variables_keep_their_type_and_references_define_the_order(tmp_path: Path) -> None:
    spec = _small(tmp_path, steps=7)
    train = spec.step("train")
    assert train.settings["max_steps"] == 7 and train.needs == ("prune",)
    assert spec.step("check").needs == ("train",) and spec.downstream("prune") == ["train", "check"]


def test_the_shipped_demo_pipeline_is_valid() -> None:
    spec = load_spec(example_pipeline("demo"))
    assert [s.kind for s in spec.steps] == ["prune", "distill", "optimize", "evaluate", "gate", "register", "deploy"]


# -- caching, changes, gates, resume ----------------------------------------------------------
def test_a_second_run_is_served_from_the_cache_and_a_change_reruns_only_downstream(
    tmp_path: Path, tiny_store: ModelStore
) -> None:
    first = run_pipeline(_small(tmp_path), store=tiny_store)
    assert first.status == "succeeded" and {s.status for s in first.steps.values()} == {"done"}
    versions = len(tiny_store.list())

    t0 = time.perf_counter()
    second = run_pipeline(_small(tmp_path), store=tiny_store)
    assert time.perf_counter() - t0 < 5
    assert {s.status for s in second.steps.values()} == {"cached"}
    assert second.steps["train"].outputs == first.steps["train"].outputs
    assert len(tiny_store.list()) == versions  # nothing registered again

    third = run_pipeline(_small(tmp_path, steps=4), store=tiny_store)
    assert [third.steps[n].status for n in ("prune", "train", "check")] == ["cached", "done", "done"]
    assert third.steps["train"].outputs["steps"] == 4

    forced = run_pipeline(_small(tmp_path, steps=4), store=tiny_store, force=("prune",))
    # the re-trained model is a new version; the gate reads only its (identical, seeded) loss
    assert [forced.steps[n].status for n in ("prune", "train", "check")] == ["done", "done", "cached"]

    # a removed model invalidates the cache entry that points to it
    tiny_store.remove(forced.steps["train"].outputs["model"], force=True)
    again = run_pipeline(_small(tmp_path, steps=4), store=tiny_store)
    assert [again.steps[n].status for n in ("prune", "train")] == ["cached", "done"]


def test_a_failing_gate_stops_the_run_and_registers_nothing(tmp_path: Path, tiny_store: ModelStore) -> None:
    train, _ = _data(tmp_path)
    text = TRAIN_ONLY.replace("< 1000", "< 0.000001").format(train=train) + """
  publish:
    kind: register
    model: ${steps.train.model}
    name: published
"""
    spec = parse_spec(text, "gate.yaml")
    with pytest.raises(GateFailed) as info:
        run_pipeline(spec, store=tiny_store)
    assert re.match(r"Gate 'check' failed: \d+\.\d+ < 0\.000001\.", str(info.value))
    assert tiny_store.find("published") is None
    run = list_runs(tiny_store)[0]
    assert run.status == "gate-failed"
    assert [run.steps[n].status for n in ("train", "check", "publish")] == ["done", "failed", "skipped"]
    assert run.steps["check"].outputs["passed"] is False
    assert "Gate 'check' failed" in (run.dir / "report.md").read_text()


def test_a_run_killed_inside_training_resumes_from_its_checkpoint(tmp_path: Path, tiny_store: ModelStore) -> None:
    train, _ = _data(tmp_path)
    spec_file = tmp_path / "p.yaml"
    spec_file.write_text(TRAIN_ONLY.format(train=train).replace("steps: 3", "steps: 150"))
    env = {**os.environ, "SLMOPS_HOME": str(tiny_store.home)}
    proc = subprocess.Popen([sys.executable, "-m", "slmops", "run", str(spec_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tiny_store.home / "runs" / "finetune-small-train" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpts.exists() and len(list(ckpts.glob("step-*"))) >= 1 and
               max(int(p.name[5:]) for p in ckpts.glob("step-*")) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = list_runs(tiny_store)[0]
    assert killed.status == "interrupted" and killed.steps["prune"].status == "done"

    run = run_pipeline(load_spec(spec_file), store=tiny_store)
    assert run.steps["prune"].status == "cached"
    assert run.steps["train"].status == "done" and run.steps["train"].outputs["resumed_from"] >= 5
    assert run.steps["train"].outputs["steps"] == 150


# -- the whole life cycle -----------------------------------------------------------------------
LIFE = """
name: life
vars:
  teacher: {teacher}
steps:
  prune:
    kind: prune
    model: tiny
    keep_layers: 1
    calibration: {train}
  distill:
    kind: distill
    teacher: ${{vars.teacher}}
    student: ${{steps.prune.model}}
    generate: {{data: {train}, task: classification, labels: [billing, technical, account], batch_size: 4}}
    train: {{method: full, max_steps: 2, batch_size: 4, max_seq_len: 256}}
  quantize:
    kind: optimize
    model: ${{steps.distill.model}}
    to: onnx
    precision: int4
  evaluate:
    kind: evaluate
    models:
      teacher: ${{vars.teacher}}
      student: ${{steps.distill.model}}
      student-int4: ${{steps.quantize.model}}
    data: {test}
    task: classification
    labels: [billing, technical, account]
    max_tokens: 4
    latency_samples: 2
  gate:
    kind: gate
    checks:
      - ${{steps.evaluate.teacher.accuracy}} >= 0.99
      - ${{steps.evaluate.student-int4.size_mb}} < ${{steps.evaluate.student.size_mb}}
  register:
    kind: register
    model: ${{steps.quantize.model}}
    name: router
    aliases: [prod]
  deploy:
    kind: deploy
    model: router@prod
    serve: {{prompt: "Hello", max_tokens: 4}}
    export: {{format: foundry}}
"""


def test_the_whole_life_cycle_on_tiny_models(tmp_path: Path, tiny_store: ModelStore, teacher: str) -> None:
    train, test = _data(tmp_path)
    spec = parse_spec(LIFE.format(teacher=teacher, train=train, test=test), "life.yaml")
    run = run_pipeline(spec, store=tiny_store, report_dir=tmp_path / "report")
    assert run.status == "succeeded", {n: s.error for n, s in run.steps.items()}
    out = {n: s.outputs for n, s in run.steps.items()}
    assert out["distill"]["accepted"] == len(TRAIN) and out["distill"]["rejected"] == 0
    assert tiny_store.get(out["quantize"]["model"]).format == "onnx-genai"
    assert out["evaluate"]["teacher"]["accuracy"] == 1.0
    assert out["evaluate"]["student-int4"]["size_reduction_pct"] is None  # the baseline (a URL) has no size
    assert [c["passed"] for c in out["gate"]["checks"]] == [True, True]
    registered = tiny_store.get("router@prod")
    assert out["register"]["model"] == registered.ref and registered.parents == [out["quantize"]["model"]]
    assert out["deploy"]["served_by"] and isinstance(out["deploy"]["answer"], str)
    assert (Path(out["deploy"]["bundle"]) / "inference_model.json").exists()

    # the report: one self-contained HTML file with its charts, and the Markdown table
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("<svg") >= 3 and "training curve" in html and "latency p50" in html
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(js|css|png))""", html)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| accuracy |" in md and "| size on disk |" in md and "teacher" in md

    # lineage: registered model -> int4 -> distilled student (teacher, synthetic data) -> pruned -> tiny
    chain = lineage(tiny_store, "router@prod")
    assert [n.step for n in chain] == ["register", "optimize", "distill", "prune", "import"]
    assert chain[2].inputs["teacher"] == teacher and any(k.startswith("synthetic") for k in chain[2].inputs)
    cli = CliRunner().invoke(app, ["models", "lineage", "router@prod"])
    assert cli.exit_code == 0 and "teacher" in cli.output and "int4" in cli.output

    # nothing changed: every step from the cache; runs list / show / compare
    again = run_pipeline(spec, store=tiny_store)
    assert {n: s.status for n, s in again.steps.items() if s.status != "cached"} == {}
    listed = CliRunner().invoke(app, ["runs", "list", "--json"])
    assert [r["id"] for r in json.loads(listed.stdout)][:2] == [again.id, run.id]
    shown = CliRunner().invoke(app, ["runs", "show", "latest", "--json"])
    assert json.loads(shown.stdout)["steps"]["gate"]["outputs"]["passed"] is True
    compared = CliRunner().invoke(app, ["runs", "compare", run.id, again.id, "--json"])
    rows = {r["name"]: r for r in json.loads(compared.stdout)["steps"]}
    assert rows["distill"]["a"].startswith("done") and rows["distill"]["b"].startswith("cached")
    assert not any(r["changed"] for r in rows.values())


def test_cli_run_reports_errors_in_one_line(tmp_path: Path, home: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  a:\n    kind: gate\n    checks: []\n")
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert isinstance(result.exception, SlmopsError) and "bad.yaml:5: steps.a.checks" in str(result.exception)
    missing = CliRunner().invoke(app, ["runs", "show", "nope"])
    assert isinstance(missing.exception, SlmopsError) and "No pipeline run 'nope'" in str(missing.exception)
    shown = CliRunner().invoke(app, ["demo", "--show-pipeline"])
    assert shown.exit_code == 0 and "kind: distill" in shown.stdout


def test_mlflow_tracking_records_a_parent_run_and_one_run_per_step(store: ModelStore) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    spec = parse_spec("name: tracked\nvars: {limit: 3}\nsteps:\n  g: {kind: gate, checks: ['${vars.limit} > 2']}\n")
    run = run_pipeline(spec, store=store, report_to=["mlflow"])
    client = MlflowClient(f"sqlite:///{store.home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("slmops-pipeline-tracked")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {run.id, "g"}
    assert runs["g"].data.tags["mlflow.parentRunId"] == runs[run.id].info.run_id
    assert runs["g"].data.metrics["passed"] == 1.0 and runs["g"].data.params["checks"] == "['3 > 2']"
    assert runs[run.id].data.params["vars.limit"] == "3" and runs[run.id].info.status == "FINISHED"
    with pytest.raises(SlmopsError, match="mlflow only"):
        run_pipeline(spec, store=store, report_to=["wandb"])


def test_the_shipped_demo_pipeline_runs_on_tiny_models(tmp_path: Path, tiny_store: ModelStore, teacher: str) -> None:
    """The demo YAML itself, with its variables pointed at a remote teacher and a tiny student: every
    step up to the gate runs; the gate then refuses, because a remote teacher has no size to compare."""
    from slmops.pipeline.demo import run_demo

    train, test = _data(tmp_path)
    overrides = {"teacher": teacher, "student_base": "tiny", "train_data": str(train), "test_data": str(test),
                 "labels": ["billing", "technical", "account"], "student_layers": 1, "prompts": 8,
                 "train_steps": 2, "test_limit": 4, "latency_samples": 1}
    with pytest.raises(SlmopsError, match=r"Gate 'gate': cannot evaluate .*size_mb.* is None, not a number"):
        run_demo(store=tiny_store, overrides=overrides, report_dir=tmp_path / "report")
    run = list_runs(tiny_store)[0]
    statuses = {n: s.status for n, s in run.steps.items()}
    assert statuses == {"prune": "done", "distill": "done", "quantize": "done", "evaluate": "done",
                        "gate": "failed", "register": "skipped", "deploy": "skipped"}
    assert run.steps["distill"].outputs["accepted"] == len(TRAIN)
    assert set(run.steps["evaluate"].outputs["labels"]) == {"teacher", "student", "distilled", "distilled-int4"}
    assert (tmp_path / "report" / "report.html").exists()
