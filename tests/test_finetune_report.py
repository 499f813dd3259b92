"""Progress and tracking: optional MLflow and TensorBoard reporters observe the run (same losses
with or without them) and a missing package is one clean error before any work."""

from __future__ import annotations

import sys

import pytest

from slmops.errors import SlmopsError
from slmops.train import make_config, run
from tests import test_finetune_train as ft
from tests.test_finetune_train import config, losses

base_dir, base, data = ft.base_dir, ft.base, ft.data  # the tiny base model and its memorisation data
SETTINGS = dict(max_steps=4, eval_split=0.34, eval_interval=2, batch_size=4)


def test_tensorboard_and_mlflow_observe_without_steering(store, base, data, home, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    plain = run(config(data, output="plain", **SETTINGS), store=store)
    tracked = run(config(data, output="tracked", report_to="mlflow,tensorboard", **SETTINGS), store=store)
    assert losses(tracked.run_dir) == losses(plain.run_dir)
    assert tracked.record.recipe["config"]["report_to"] == ["mlflow", "tensorboard"]

    events = EventAccumulator(str(tracked.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses(tracked.run_dir), rel=1e-6)
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4]

    client = mlflow.tracking.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("slmops-finetune").experiment_id])
    assert found.info.run_name == "tracked" and found.info.status == "FINISHED"
    assert found.data.params["lr"] == str(tracked.record.recipe["config"]["lr"])
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses(tracked.run_dir))
    assert found.data.metrics["final/eval_loss"] == pytest.approx(tracked.eval_loss)


def test_a_missing_tracker_is_a_clean_error_before_any_work(store, base, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(SlmopsError, match="--report-to mlflow needs a package.*pip install mlflow"):
        run(config(data, report_to=["mlflow"]), store=store)
    assert not (store.home / "runs" / "finetune-qa").exists()
    with pytest.raises(SlmopsError, match="--report-to: Input should be 'mlflow' or 'tensorboard'"):
        make_config({"model": "m", "data": "d.jsonl", "output": "o", "report_to": "mlflow,wandb"})
