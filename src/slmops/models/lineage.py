"""``lineage(ref)``: the chain from a model back through every step that made it.

Each store record names its parents and the recipe that made it (pull, prune, finetune,
distill, optimize, register, ...), and carries the metrics measured on it (training loss,
perplexity change, evaluation results). Walking the parents gives the chain from a deployed
model back to the pulled base, with the data files (and their hashes) and the teacher at each
stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmops.models.store import ModelRecord, ModelStore


@dataclass(frozen=True)
class LineageNode:
    record: ModelRecord
    depth: int
    step: str  # the recipe kind: pull, import, finetune, distill, prune, optimize, register, ...
    inputs: dict[str, str] = field(default_factory=dict)  # data files / teacher -> sha256 or ref
    details: dict[str, Any] = field(default_factory=dict)  # the settings that matter for this step
    metrics: dict[str, Any] = field(default_factory=dict)  # flat, numeric

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.record.ref, "depth": self.depth, "step": self.step, "format": self.record.format,
                "size_bytes": self.record.size_bytes, "parameters": self.record.parameters,
                "aliases": self.record.aliases, "parents": self.record.parents, "inputs": self.inputs,
                "details": self.details, "metrics": self.metrics, "created_at": self.record.created_at}


_DETAILS = {
    "finetune": ("method", "max_steps", "epochs", "lr", "lora_r", "teacher", "kd_loss", "kd_weight"),
    "optimize": ("to", "precision", "quant", "block_size", "merge"),
    "prune": ("kept", "removed", "layers"),
    "pull": ("source",),
    "register": ("source", "pipeline"),
}


def _inputs(recipe: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in ("data", "eval_data"):
        if isinstance(recipe.get(key), dict):
            out.update({path: sha for path, sha in recipe[key].items()})
    distill = recipe.get("distill") or {}
    if isinstance(distill, dict):
        if distill.get("teacher"):
            out["teacher"] = str(distill["teacher"])
        if isinstance(distill.get("synthetic"), dict):
            out.update({f"synthetic {path}": sha for path, sha in distill["synthetic"].items()})
    kd = recipe.get("kd")
    if isinstance(kd, dict) and kd.get("teacher"):
        out["kd teacher"] = f"{kd['teacher']} ({kd.get('loss')}, weight {kd.get('weight')})"
    calibration = recipe.get("calibration")
    if isinstance(calibration, dict) and calibration.get("sha256"):
        out[f"calibration {calibration.get('source', '')}".strip()] = calibration["sha256"]
    if recipe.get("gguf_sha256"):
        out["gguf"] = recipe["gguf_sha256"]
    return out


def _details(kind: str, recipe: dict[str, Any]) -> dict[str, Any]:
    config = recipe.get("config") if isinstance(recipe.get("config"), dict) else {}
    merged = {**config, **recipe}
    keys = _DETAILS.get(kind, ())
    return {k: merged[k] for k in keys if merged.get(k) not in (None, "", [], {})}


def _flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = value
        elif isinstance(value, dict) and len(name) < 60:
            out.update(_flat_metrics(value, name + "."))
    return out


def lineage(store: ModelStore, ref: str) -> list[LineageNode]:
    """The model and its ancestors, depth-first (each record once, parents in their recorded order)."""
    nodes: list[LineageNode] = []
    seen: set[str] = set()

    def visit(rec: ModelRecord, depth: int) -> None:
        if rec.ref in seen:
            return
        seen.add(rec.ref)
        recipe = rec.recipe or {}
        kind = str(recipe.get("kind") or ("distill" if recipe.get("distill") else "import"))
        if kind == "finetune" and recipe.get("distill"):
            kind = "distill"
        nodes.append(LineageNode(rec, depth, kind, _inputs(recipe), _details(kind, recipe),
                                 _flat_metrics(rec.metrics or {})))
        for parent in rec.parents:
            found = store.find(parent)
            if found is not None:
                visit(found, depth + 1)

    visit(store.get(ref), 0)
    return nodes
