"""Every pipeline in examples/ runs, as shipped, on a tiny model (only its variables pointed at
it and shortened), from the repository root as its header says; the README's commands use only
files that exist in the repository."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from slmops.models.store import ModelStore
from slmops.pipeline import list_runs, load_spec, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/pipeline.yaml"))
TINY = {"model": "tiny", "max_steps": 1}
EXTRA = {"classification": {"min_gain": -1.0}}  # a tiny random model cannot be asked to beat its base
MODELS = {
    "classification": {"ticket-router"},
    "qa": {"qa-adapter", "qa-model", "qa-model-int4"},
    "summarization": {"summarizer"},
    "adapter": {"shop-assistant", "shop-assistant-merged"},
}


@pytest.fixture()
def tiny_store(store: ModelStore, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.chdir(ROOT)  # the examples name their data relative to the repository root
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        store.add(staged / "model", "tiny", "hf")
    return store


def test_the_examples_folder_has_the_shipped_examples():
    assert {"adapter", "classification", "qa", "summarization"} <= set(EXAMPLES)
    assert set(EXAMPLES) <= set(MODELS), "a new example: add the models it registers to MODELS"


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_pipeline_runs_on_a_tiny_model(name: str, tiny_store: ModelStore, tmp_path: Path):
    spec = load_spec(ROOT / "examples" / name / "pipeline.yaml", {**TINY, **EXTRA.get(name, {})})
    run_pipeline(spec, store=tiny_store, report_dir=tmp_path / "report")
    run = list_runs(tiny_store)[0]
    assert {s.status for s in run.steps.values()} == {"done"}, {n: s.status for n, s in run.steps.items()}
    assert MODELS[name] <= set(tiny_store.names()), tiny_store.names()
    if "evaluate" in run.steps:
        assert set(run.steps["evaluate"].outputs["labels"]) >= {"base"}


def test_the_readme_uses_only_files_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme, "the README must not point outside the repository"
    named = {p for p in re.findall(r"(?<![\w/])examples/[\w./-]+\.(?:jsonl|yaml|csv|json)\b", readme)
             if "NAME" not in p}  # examples/NAME/pipeline.yaml is the pattern, not a file
    assert named, "the README's examples use the files in examples/"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
    code = "\n".join(re.findall(r"```(?:bash|python)\n(.*?)```", readme, flags=re.S))
    # the training and evaluation data the code blocks read (flags and config keys) is shipped
    flag = r"""(?:--data|--eval|--eval-data|\bdata=|\beval=|"data":)\s*["']?"""
    reads = re.findall(flag + r"([\w/.-]+\.(?:jsonl|csv|json))", code)
    assert reads and all(p.startswith("examples/") for p in reads), reads
