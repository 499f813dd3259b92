"""Optional experiment tracking: copy a run's events to MLflow and/or TensorBoard.

Reporters are observers: they receive the same :class:`~slmops.train.finetune.TrainEvent`s as
the progress bar and never steer the loop. They are checked before any work starts (a missing
package is one clear error) and open at the run's first step. MLflow logs to
``$MLFLOW_TRACKING_URI`` when set, else to ``sqlite:///$SLMOPS_HOME/mlflow.db`` (experiment
``slmops-finetune``, one MLflow run per fine-tuning run or search trial); TensorBoard writes
event files to ``<run folder>/tensorboard``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError

EXPERIMENT = "slmops-finetune"
_PACKAGES = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def check_reporters(names: Sequence[str]) -> None:
    """Fail before any work when a requested tracker's package is missing."""
    import importlib

    missing = []
    for name in names:
        module, package = _PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append((name, package))
    if missing:
        raise SlmopsError(
            "--report-to " + ", ".join(n for n, _ in missing) + " needs a package that is not installed.",
            "Install it (pip install " + " ".join(p for _, p in missing) + "), or drop it from --report-to.",
        )


class _MLflow:
    def __init__(self, uri: str, run_name: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags={"slmops.output": run_name}).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class _TensorBoard:
    def __init__(self, log_dir: Path, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=2) + "\n```")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, ok: bool) -> None:
        self.writer.close()


class Reporters:
    """Fans :class:`TrainEvent`s out to the requested trackers; a no-op when none are asked for."""

    def __init__(self, names: Sequence[str], *, run_dir: Path, home: Path, run_name: str, config: Any) -> None:
        check_reporters(names)
        self.names = list(names)
        self.run_dir, self.home, self.run_name, self.config = run_dir, home, run_name, config
        self.sinks: list[Any] = []

    def _open(self) -> None:
        params = {k: _param(v) for k, v in self.config.model_dump(mode="json").items()}
        for name in self.names:
            if name == "mlflow":
                uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"
                self.sinks.append(_MLflow(uri, self.run_name, params))
            else:
                self.sinks.append(_TensorBoard(self.run_dir / "tensorboard", params))

    def __call__(self, event: Any) -> None:
        if event.kind == "start" and not self.sinks:
            self._open()
        values: dict[str, float] = {}
        if event.kind == "step" and event.loss is not None:
            values = {"train/loss": event.loss, "train/lr": event.lr}
            values["train/tokens_per_second"] = event.tokens_per_second
        elif event.kind == "eval" and event.eval_loss is not None:
            values = {"eval/loss": event.eval_loss, "eval/perplexity": math.exp(min(event.eval_loss, 50))}
        for sink in self.sinks:
            if values:
                sink.scalars(event.step, values)

    def close(self, ok: bool, metrics: dict[str, Any] | None = None) -> None:
        final = {f"final/{k}": float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            if final:
                sink.scalars(int(final.get("final/steps", 0)), final)
            sink.close(ok)


def _param(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text[:500]
