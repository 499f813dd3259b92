"""What a new user trips over: `models list` draws every store model, `models rm` takes the run
folder only that model used, `slmops gc` reports and reclaims what no model needs, the fine-tune
summary gives an adapter's own size, and a plain LoRA run keeps stderr for the user."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.cli import app
from slmops.models.store import ModelStore


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def add(store: ModelStore, name: str, parents: list[str] | None = None, fmt: str = "hf", size: int = 10) -> str:
    with store.staging() as staged:
        (staged / "m").mkdir()
        (staged / "m" / "weights.bin").write_bytes(b"x" * size)
        return store.add(staged / "m", name, fmt, parents=parents).ref


def age(path: Path, seconds: float = 7200) -> None:
    """Make a file or folder look untouched for ``seconds``."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then))


# -- models list -----------------------------------------------------------------------------------
def test_models_list_draws_every_store_model_however_deep_its_lineage(store):
    """The demo's chain: base -> pruned -> distilled student -> quantized, an adapter on the base,
    an alias on a grandchild, and a model whose parent was removed."""
    base = add(store, "base")
    pruned = add(store, "demo-prune", [base])
    distilled = add(store, "demo-distill", [pruned, "teacher:1"])
    add(store, "demo-quantize", [distilled], fmt="onnx-genai")
    add(store, "support-router", [distilled])
    store.set_alias("support-router:1", "prod")
    add(store, "adapter", [base], fmt="peft-adapter")
    add(store, "orphan", ["gone:3"])
    out = cli("models", "list")
    table = out[out.index("Store ("):]
    for ref in ("base:1", "demo-prune:1", "demo-distill:1", "demo-quantize:1", "support-router:1", "adapter:1",
                "orphan:1"):
        assert table.count(ref) == 1, (ref, table)
    assert "prod" in table
    lines = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 2}
    assert lines["└ demo-prune:1"] and lines["└ demo-quantize:1"].split("│")[1].startswith("       └")


# -- models rm --------------------------------------------------------------------------------------
def test_removing_the_last_version_removes_the_models_run_folders(store, home):
    add(store, "bot")
    add(store, "bot")
    add(store, "other")
    runs = home / "runs"
    for folder in ("finetune-bot", "search-bot", "distill-bot", "finetune-other", "finetune-botany"):
        (runs / folder / "checkpoints").mkdir(parents=True)
        (runs / folder / "checkpoints" / "w.safetensors").write_bytes(b"w" * 1000)
    data = json.loads(cli("models", "rm", "bot:1", "--json"))
    assert data["removed"] == ["bot:1"] and data["run_folders"] == []  # bot:2 still uses them
    assert (runs / "finetune-bot").is_dir()
    data = json.loads(cli("models", "rm", "bot", "--json"))
    assert data["removed"] == ["bot:2"]
    assert sorted(Path(p).name for p in data["run_folders"]) == ["distill-bot", "finetune-bot", "search-bot"]
    assert data["freed_bytes"] == 10 + 3000
    assert sorted(p.name for p in runs.iterdir()) == ["finetune-botany", "finetune-other"]
    assert not list(store.tmp_dir.glob("trash-*"))
    assert "removed other:1 and runs/finetune-other" in cli("models", "rm", "other")


# -- gc --------------------------------------------------------------------------------------------
def test_gc_reports_then_reclaims_only_what_no_model_needs(store, home):
    from slmops.pipeline.cache import pipelines_dir, remember

    keep = add(store, "keep")
    runs = home / "runs"
    for folder in ("finetune-keep", "finetune-gone", "distill-run-t-data", "distill-run-u-data", "finetune-fresh"):
        (runs / folder).mkdir(parents=True)
        (runs / folder / "f.bin").write_bytes(b"r" * 100)
    (runs / "finetune-gone" / "checkpoints").mkdir()
    # a model's recipe names the synthetic data in one distill-run folder: that one is needed
    with store.staging() as staged:
        (staged / "m").mkdir()
        store.add(staged / "m", "student", "hf", recipe={"synthetic": str(runs / "distill-run-t-data" / "s.jsonl")})
    debris = store.tmp_dir / "stage-0123456789ab"
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"t" * 50)
    busy = store.tmp_dir / "stage-busy"
    busy.mkdir()
    stray = store.models_dir / "keep" / "v9"
    stray.mkdir()
    (stray / "x").write_bytes(b"a" * 7)
    remember(store, "live", "s", "finetune", 1.0, {"model": keep})
    remember(store, "stale", "s", "finetune", 1.0, {"model": "removed:4"})
    for p in (debris, stray, *runs.iterdir(), *(pipelines_dir(store) / "cache").iterdir()):
        age(p)
    age(runs / "finetune-fresh", 60)  # touched a minute ago: maybe a running fine-tune

    report = json.loads(cli("gc", "--dry-run", "--json"))
    found = {(i["kind"], Path(i["path"]).name) for i in report["items"]}
    assert found == {("tmp", "stage-0123456789ab"), ("artifact", "v9"), ("run", "finetune-gone"),
                     ("run", "distill-run-u-data"), ("cache", "stale.json")}
    assert report["dry_run"] and report["size_bytes"] == 50 + 7 + 100 + 100 + (pipelines_dir(store) / "cache" /
                                                                                  "stale.json").stat().st_size
    assert "interrupted run" in next(i["why"] for i in report["items"] if i["path"].endswith("finetune-gone"))
    assert debris.exists() and stray.exists()  # a dry run removes nothing

    out = cli("gc")
    assert "5 item(s), freed" in out
    assert not debris.exists() and not stray.exists() and busy.exists()
    assert sorted(p.name for p in runs.iterdir()) == ["distill-run-t-data", "finetune-fresh", "finetune-keep"]
    assert [p.name for p in (pipelines_dir(store) / "cache").iterdir()] == ["live.json"]
    assert store.get("keep").path.is_dir()
    assert "nothing to reclaim" in cli("gc")


# -- fine-tune summary and stderr --------------------------------------------------------------------
@pytest.fixture()
def tiny(store, tiny_model_dir, tmp_path):
    from slmops.models.artifacts import import_model

    import_model(store, tiny_model_dir, "tiny")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": f"A{i}."}) + "\n" for i in range(4)))
    return data


def test_the_lora_summary_gives_the_adapters_size_not_the_base_models(store, tiny):
    from slmops.cli.common import human_size

    out = CliRunner().invoke(app, ["finetune", "--model", "tiny", "--data", str(tiny), "--output", "ad",
                                   "--max-steps", "1"], env={"COLUMNS": "300"}).stdout
    rec = store.get("ad")
    assert rec.format == "peft-adapter" and f"adapter {human_size(rec.size_bytes)} " in out, out
    assert rec.size_bytes < store.get("tiny").size_bytes


def test_a_plain_lora_run_writes_nothing_to_stderr_but_its_own_lines(home, tiny, slmops_bin):
    from tests.test_cli import run_script

    proc = run_script(slmops_bin, home, "finetune", "--model", "tiny", "--data", str(tiny), "--output", "ad",
                      "--max-steps", "1")
    assert proc.returncode == 0, proc.stderr
    for noise in ("Warning", "warn", "kernels", "bitsandbytes", "Could not find a config file"):
        assert noise not in proc.stderr, proc.stderr
