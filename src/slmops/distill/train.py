"""Stage 2: the student learns the teacher's accepted answers through the fine-tuning recipe.

Accepted synthetic records become prompt/completion pairs (or chat ``messages`` for
conversations), written to ``$SLMOPS_HOME/runs/distill-OUTPUT/train.jsonl``; then
:func:`slmops.train.run` trains the student (LoRA, QLoRA or full) exactly as ``slmops finetune``
would, with every finetune option available, logit-level KD from a local ``teacher`` included.
The lineage (teacher, task, recipe hashes, the SHA-256 of each synthetic file, the filter counts
of its generation, and the KD teacher if any) goes into the registered model's recipe under
``distill`` and into ``distill.json`` in the run folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from slmops.configs import CommandConfig
from slmops.data.records import write_jsonl_atomic
from slmops.distill.journal import read_lines, side_path
from slmops.errors import DataError
from slmops.files import file_sha256
from slmops.models.refs import parse_ref, validate_name
from slmops.models.store import ModelRecord, ModelStore
from slmops.train import FinetuneResult, load_config
from slmops.train import run as finetune_run
from slmops.train.finetune import Progress


@dataclass(frozen=True)
class DistillTrainResult:
    finetune: FinetuneResult
    record: ModelRecord
    train_file: Path
    lineage: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.finetune.to_dict(), "record": self.record.to_dict(), "train_file": str(self.train_file),
                "lineage": self.lineage}


def training_record(line: dict[str, Any], where: str) -> dict[str, Any]:
    """One accepted synthetic line as a finetune record: ``prompt``/``completion`` or ``messages``."""
    if line.get("reason"):
        raise DataError(f"{where}: a rejected record (reason {line['reason']!r}).",
                        "Train on the accepted output file, not on the .rejected.jsonl side file.")
    if isinstance(line.get("messages"), list):
        return {"messages": line["messages"]}
    if isinstance(line.get("prompt"), str) and isinstance(line.get("completion"), str):
        return {"prompt": line["prompt"], "completion": line["completion"]}
    raise DataError(f"{where}: no 'prompt'+'completion' or 'messages' (keys: {', '.join(line)}).",
                    "Give the output of `slmops distill generate`.")


def synthetic_examples(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training records from synthetic files, and their lineage."""
    records: list[dict[str, Any]] = []
    filters: Counter[str] = Counter()
    teachers: set[str] = set()
    tasks: set[str] = set()
    recipes: set[str] = set()
    for path in paths:
        if not path.is_file():
            raise DataError(f"Synthetic data file {path} does not exist.", "Run `slmops distill generate` first.")
        for lineno, line in read_lines(path, skip_torn=True):  # a torn tail is generate's to repair
            records.append(training_record(line, f"{path}, line {lineno}"))
            teachers.add(str(line.get("teacher")))
            tasks.add(str(line.get("task")))
            recipes.add(str(line.get("recipe")))
        rejected = side_path(path, "rejected.jsonl")
        if rejected.is_file():
            filters.update(str(line.get("reason")) for _, line in read_lines(rejected, skip_torn=True))
    if not records:
        raise DataError(f"{', '.join(map(str, paths))} hold no accepted records.",
                        "Check the rejection counts of `slmops distill generate` (and its .rejected.jsonl file).")
    lineage = {
        "kind": "distill",
        "teacher": sorted(teachers)[0] if len(teachers) == 1 else sorted(teachers),
        "task": sorted(tasks)[0] if len(tasks) == 1 else sorted(tasks),
        "recipes": sorted(recipes),
        "synthetic": {str(p.resolve()): file_sha256(p) for p in paths},
        "records": len(records),
        "filters": {"accepted": len(records), **{f"rejected: {k}": v for k, v in sorted(filters.items())}},
    }
    return records, lineage


def default_output(student: str) -> str:
    parsed = parse_ref(student)
    name = parsed.name if parsed.name else (parsed.path.name if parsed.path else "student")
    return validate_name(re.sub(r"[^a-z0-9._-]+", "-", str(name).lower()).strip("-.")[:88] + "-distilled")


class DistillTrainConfig(CommandConfig):
    """Everything one ``slmops distill train`` needs: the student, the teacher's accepted answers,
    and the fine-tuning settings (any :class:`~slmops.train.FinetuneConfig` key but ``model``,
    ``data`` and ``output``, which this config sets), checked by ``FinetuneConfig`` before any
    file is written."""

    what: ClassVar[str] = "distill train settings"
    example: ClassVar[str] = "`slmops distill train --help` lists them."

    student: str = Field(description="Student model: store name, catalog name or path.")
    synthetic: tuple[Path, ...] = Field(min_length=1, description="Synthetic data file(s) from generate.")
    output: str | None = Field(None, description="Store name for the distilled student (default: <student>-distilled).")
    train: dict[str, Any] = Field(default_factory=dict, description="`finetune` settings: method, max_steps, lr, ...")
    config_file: Path | None = Field(None, description="YAML file of any finetune keys (``train`` overrides them).")


def run_train(
    config: DistillTrainConfig, *, store: ModelStore | None = None, progress: Progress | None = None
) -> DistillTrainResult:
    """Train ``config.student`` on the accepted records of ``config.synthetic`` and register it."""
    store = store or ModelStore()
    output = validate_name(config.output) if config.output else default_output(config.student)
    records, lineage = synthetic_examples(config.synthetic)
    run_dir = store.home / "runs" / f"distill-{output}"
    train_file = run_dir / "train.jsonl"
    finetune = load_config(
        config.config_file, {**config.train, "model": config.student, "data": [train_file], "output": output}
    )
    write_jsonl_atomic(train_file, records)  # after every option was validated
    lineage = {**lineage, "train_file": str(train_file), "train_sha256": file_sha256(train_file)}
    if finetune.teacher:
        lineage["kd_teacher"] = finetune.teacher  # resolved, with the KD settings, in the recipe's "kd"
    (run_dir / "distill.json").write_text(json.dumps(lineage, indent=2) + "\n", encoding="utf-8")
    result = finetune_run(finetune, store=store, progress=progress, recipe={"distill": lineage})
    return DistillTrainResult(result, result.record, train_file, lineage)
