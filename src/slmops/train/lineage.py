"""Lineage of a fine-tuned artifact: the recipe (base, data hashes, every setting), the final
metrics, and its registration in the store from a staging folder."""

from __future__ import annotations

import math
from typing import Any

from slmops.data.examples import ExampleSet
from slmops.files import file_sha256
from slmops.models.artifacts import write_provenance
from slmops.models.resolve import ResolvedModel
from slmops.models.store import ModelRecord, ModelStore
from slmops.train.checkpoint import Tracker
from slmops.train.config import FinetuneConfig
from slmops.train.model import save_result, trainable_parameters


def final_metrics(tracker: Tracker) -> dict[str, Any]:
    metrics: dict[str, Any] = {"train_loss": tracker.train_loss, "steps": tracker.step, "tokens": tracker.tokens}
    if tracker.best_loss is not None:
        metrics |= {
            "eval_loss": tracker.best_loss,
            "perplexity": math.exp(min(tracker.best_loss, 50)),
            "best_step": tracker.best_step,
        }
    return metrics


def kd_lineage(config: FinetuneConfig, teacher_ref: str) -> dict[str, Any]:
    """The logit-KD part of a recipe: the resolved teacher and the loss settings."""
    return {"teacher": teacher_ref, "loss": config.kd_loss, "temperature": config.kd_temperature,
            "weight": config.kd_weight, "top_k": config.kd_top_k}  # fmt: skip


def register(
    store: ModelStore,
    model: Any,
    tokenizer: Any,
    config: FinetuneConfig,
    resolved: ResolvedModel,
    base_ref: str | None,
    data: ExampleSet,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> ModelRecord:
    """Stage the adapter (or full model) with its provenance, then add it to the store; ``extra``
    joins the recipe (e.g. the search that chose these settings)."""
    recipe = {
        "kind": "finetune",
        "base": base_ref or str(resolved.path),
        "data": {str(p): file_sha256(p) for p in config.data},
        "eval_data": {str(config.eval_data): file_sha256(config.eval_data)} if config.eval_data else None,
        "data_shapes": data.shapes,
        "truncated": data.truncated,
        "dropped": data.dropped,
        "config": config.model_dump(mode="json"),
        **(extra or {}),
    }
    fmt = "hf" if config.method == "full" else "peft-adapter"
    parents = [base_ref] if base_ref else []
    with store.staging("finetune") as stage:
        save_result(model, tokenizer, stage, method=config.method, base_ref=base_ref)
        write_provenance(
            stage, {"name": config.output, "format": fmt, "parents": parents, "recipe": recipe, "metrics": metrics}
        )
        return store.add(
            stage,
            config.output,
            fmt,
            parents=parents,
            recipe=recipe,
            metrics=metrics,
            parameters=trainable_parameters(model) if fmt == "peft-adapter" else sum(
                p.numel() for p in model.parameters()
            ),
        )
