"""Optional MLflow tracking of a pipeline run: one parent run per pipeline run, one nested run
per step with its settings as params and its numeric outputs as metrics; the report files as
artifacts of the parent. Uses ``MLFLOW_TRACKING_URI`` or ``$SLMOPS_HOME/mlflow.db``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slmops.train.reporting import check_reporters


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif not isinstance(value, list) or len(value) < 20:
        out[prefix] = value
    return out


class MlflowTracker:
    def __init__(self, home: Path, pipeline: str, run_id: str, variables: dict[str, Any]) -> None:
        check_reporters(["mlflow"])
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}")
        name = f"slmops-pipeline-{pipeline}"
        exp = self.client.get_experiment_by_name(name)
        self.experiment = exp.experiment_id if exp is not None else self.client.create_experiment(
            name, artifact_location=(home / "mlflow-artifacts").as_uri())  # not ./mlruns in the working dir
        self.parent = self.client.create_run(self.experiment, run_name=run_id,
                                             tags={"slmops.pipeline": pipeline}).info.run_id
        params = [Param(f"vars.{k}", str(v)[:500]) for k, v in _flat("", variables, {}).items()]
        if params:
            self.client.log_batch(self.parent, params=params[:100])

    def step(self, name: str, kind: str, status: str, seconds: float, settings: dict[str, Any],
             outputs: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        child = self.client.create_run(self.experiment, run_name=name, tags={
            "mlflow.parentRunId": self.parent, "slmops.step.kind": kind, "slmops.step.status": status}).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _flat("", settings, {}).items()][:100]
        numbers = {k: float(v) for k, v in _flat("", outputs, {}).items() if isinstance(v, int | float)}
        numbers["seconds"] = seconds
        self.client.log_batch(child, params=params, metrics=[Metric(k, v, 0, 0) for k, v in numbers.items()])
        self.client.set_terminated(child, "FAILED" if status == "failed" else "FINISHED")

    def close(self, ok: bool, files: list[str]) -> None:
        for path in files:
            self.client.log_artifact(self.parent, path)
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")
