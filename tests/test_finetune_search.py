"""Hyper-parameter search: the space file is validated up front, every trial is recorded,
weak trials are pruned, and only the best one is registered."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from slmops.cli.finetune import finetune
from slmops.errors import SlmopsError
from slmops.train import search
from tests import test_finetune_train as ft
from tests.test_finetune_train import config

base_dir, base, data = ft.base_dir, ft.base, ft.data  # the tiny base model and its memorisation data


def test_two_trial_search_records_both_and_registers_the_best(store, base, data, tmp_path, home):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1e-3, high: 3e-2, log: true}\nlora_r: {type: int, low: 2, high: 8}\n"
                     "lora-alpha: [32, 64]\n")  # fmt: skip
    app = typer.Typer()
    app.command("finetune")(finetune)
    app.command("noop", hidden=True)(lambda: None)
    args = ["finetune", "--model", base, "--data", str(data), "--output", "qa", "--text-template", ft.TEMPLATE,
            "--max-steps", "6", "--eval-split", "0.34", "--eval-interval", "2", "--batch-size", "4",
            "--search", str(space), "--trials", "2", "--sampler", "random"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "search: 2 trials" in out.stdout and "registered qa:1" in out.stdout

    folder = home / "runs" / "search-qa"
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert [t["number"] for t in trials] == [0, 1] and {t["state"] for t in trials} == {"complete"}
    assert all(1e-3 <= t["params"]["lr"] <= 3e-2 and t["params"]["lora_alpha"] in (32, 64) for t in trials)
    assert trials[0]["params"] != trials[1]["params"]
    assert [r.ref for r in store.versions("qa")] == ["qa:1"]  # one model, the best trial
    best = min(trials, key=lambda t: t["eval_loss"])
    rec = store.get("qa")
    assert rec.metrics["eval_loss"] == pytest.approx(best["eval_loss"])
    assert rec.recipe["search"]["best_trial"] == best["number"] and rec.recipe["search"]["trials"] == 2
    assert {k: rec.recipe["config"][k] for k in best["params"]} == best["params"]
    assert rec.recipe["config"]["search"] is None
    for t in trials:  # each trial's own metrics log, no checkpoints
        assert (folder / f"trial-{t['number']:03d}" / "metrics.jsonl").exists()
        assert not list((folder / f"trial-{t['number']:03d}" / "checkpoints").iterdir())


def test_weak_trials_are_pruned_at_an_evaluation(store, base, data):
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for lr in (1e-2, 1e-2, 1e-7):  # the third cannot keep up with the median of the first two
        study.enqueue_trial({"lr": lr})
    space = data.parent / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-8, high: 0.1, log: true}\n")
    cfg = config(data, max_steps=8, eval_split=0.34, eval_interval=2, batch_size=4, search=str(space), trials=3)
    res = search(cfg, store=store, study=study)
    assert [t.state for t in res.trials] == ["complete", "complete", "pruned"]
    assert res.trials[2].steps == 2 < res.trials[0].steps == 8
    assert res.best_trial in (0, 1) and len(store.versions("qa")) == 1


def test_space_problems_are_reported_together_before_training(store, base, data):
    space = data.parent / "bad.yaml"
    space.write_text(
        "lr: {type: float, low: 0, high: 0.1, log: true}\n"
        "lora_r: {type: int, low: 8, high: 4, hihg: 3}\n"
        "lora_dropout: {type: float, low: 0.0, high: 1.5}\n"
        "model: [a, b]\n"
        "learning_rate: {type: float, low: 1, high: 2}\n"
        "batch_size: {type: integer, low: 1, high: 4}\n"
        "method: {type: choice, choices: []}\n"
    )
    with pytest.raises(SlmopsError) as err:
        search(config(data, eval_split=0.34, search=str(space), trials=2), store=store)
    msg = str(err.value)
    assert f"The search space {space} has 8 problem(s)" in msg
    expected = ["lr: a log scale needs low > 0", "lora_r: unknown key 'hihg' (did you mean 'high'?)",
                "lora_r: low (8) must be below high (4)", "lora_dropout: the value 1.5 is not allowed",
                "model: not a setting a search can vary", "learning_rate: not a setting a search can vary",
                "batch_size: type must be int, float or choice", "method: choices must be a non-empty list"]
    for part in expected:
        assert part in msg, part
    assert not (store.home / "runs" / "search-qa").exists()
    with pytest.raises(SlmopsError, match="--search ranks trials by eval loss"):
        config(data, search=str(space))
