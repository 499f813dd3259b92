"""Everything before the first step: the run folder rules, the data, the model and the batch plan.

All of it is validated before any training starts; under ``torchrun`` every process runs it
(and fails the same way), and only rank 0 writes anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from slmops.data.examples import Example, ExampleSet, build_examples
from slmops.errors import SlmopsError
from slmops.models.refs import validate_name
from slmops.models.resolve import ResolvedModel, resolve
from slmops.models.store import ModelStore
from slmops.train.batches import Batch, BatchPlan, eval_batches, make_rows, split_eval
from slmops.train.checkpoint import RunDir
from slmops.train.config import RESUMABLE_CHANGES, FinetuneConfig
from slmops.train.distributed import Dist
from slmops.train.model import check_same_vocabulary, load_for_training, load_teacher, load_tokenizer


@dataclass
class Setup:
    """A validated run, ready for its first step."""

    config: FinetuneConfig
    resolved: ResolvedModel
    base_ref: str | None
    tokenizer: Any
    model: Any
    train_set: ExampleSet
    eval_examples: list[Example]
    plan: BatchPlan  # global micro-batches (``batch_size`` rows per process)
    evals: list[Batch]  # this process's share of the evaluation batches
    total_steps: int
    teacher: Any = None  # the frozen teacher for logit KD (``config.kd``), or None
    teacher_ref: str = ""


def prepare(
    config: FinetuneConfig, store: ModelStore, run_dir: RunDir, dist: Dist, status: Any = None
) -> Setup:
    say = status or (lambda message: None)
    validate_name(config.output)
    check_run_dir(run_dir, config)
    resolved = resolve(config.model, store, progress=say)
    base_ref = resolved.record.ref if resolved.record else None
    if config.lora and base_ref is None:
        raise SlmopsError(
            f"A LoRA adapter needs its base model in the store, and {config.model} is a path.",
            f"Import it first: `slmops models import {config.model} --name NAME`, then --model NAME.",
        )
    tokenizer = load_tokenizer(resolved)
    train_set, eval_examples = load_data(config, tokenizer)
    teacher, teacher_ref = open_teacher(config, store, tokenizer, resolved.label, say) if config.teacher else (None, "")
    say(f"loading {resolved.label} for {config.method} fine-tuning" + (f" ({dist.world} processes)" * dist.active))
    torch.manual_seed(config.seed)  # LoRA initialisation, then dropout
    model = load_for_training(resolved, config)
    if dist.device != "cpu":  # a torchrun rank with its own GPU: the model, the teacher and every batch live there
        model.to(dist.device)
        if teacher is not None:
            teacher.to(dist.device)
    if dist.active:
        dist.broadcast_params(model)
        torch.manual_seed(config.seed + 7919 * dist.rank)  # each process its own dropout masks
    rows = make_rows(train_set.examples, config.max_seq_len, packing=config.packing, seed=config.seed)
    if len(rows) < dist.world:
        raise SlmopsError(f"{len(rows)} training row(s) cannot feed {dist.world} processes.", "Add data.")
    plan = BatchPlan(rows, config.batch_size * dist.world, config.seed)
    pad_id = tokenizer.pad_token_id
    evals = eval_batches(eval_examples, config.max_seq_len, config.batch_size, pad_id) if eval_examples else []
    evals = [b.to(dist.device) for b in evals]
    total = config.max_steps or math.ceil(config.epochs * plan.per_epoch / config.grad_accum)
    return Setup(config, resolved, base_ref, tokenizer, model, train_set, eval_examples, plan, dist.shard(evals), total,
                 teacher, teacher_ref)  # fmt: skip


def open_teacher(config: FinetuneConfig, store: ModelStore, tokenizer: Any, student: str, say: Any) -> tuple[Any, str]:
    """The frozen KD teacher and its reference, after checking it is local and shares the
    student's tokenizer (compared before any weights load)."""
    ref = str(config.teacher)
    if ref.startswith(("http://", "https://")):
        raise SlmopsError(
            f"Logit-level KD needs the teacher's logits, and {ref} is a remote endpoint that only returns text.",
            "Give a local teacher (store name or path) for --teacher, or distil from the remote teacher through "
            "synthetic data: `slmops distill generate --teacher URL`, then `slmops distill train`.",
        )
    teacher = resolve(ref, store, progress=say)
    base = None
    if teacher.format == "peft-adapter" and teacher.record is not None and teacher.record.base:
        base = resolve(teacher.record.base, store, progress=say)
    if teacher.format not in ("hf", "gguf", "peft-adapter"):
        raise SlmopsError(
            f"The teacher {teacher.label} is a {teacher.format} artifact; logit KD needs a PyTorch model.",
            "Use the model it was converted from (a Hugging Face, GGUF or adapter artifact) as --teacher.",
        )
    check_same_vocabulary(tokenizer, load_tokenizer(teacher), student, teacher.label)
    say(f"loading teacher {teacher.label} for logit KD ({config.kd_loss}, T={config.kd_temperature}, "
        f"weight {config.kd_weight}" + (f", top-{config.kd_top_k}" if config.kd_top_k else "") + ")")  # fmt: skip
    return load_teacher(teacher, base), teacher.label


def check_run_dir(run_dir: RunDir, config: FinetuneConfig) -> None:
    """Never lose a run: an unfinished one is resumed (same config) or refused, not overwritten."""
    if config.resume and (run_dir.path / "result.json").exists():
        raise SlmopsError(
            f"The run for {config.output!r} already finished and registered its result; there is nothing to resume.",
            "Run without --resume to train a new version.",
        )
    if config.resume:
        saved = run_dir.saved_config()
        current = config.model_dump(mode="json")
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved and saved.get(k) != current[k])
        if changed:
            raise SlmopsError(
                f"Cannot resume {run_dir.path}: these settings differ from the interrupted run: {', '.join(changed)}.",
                "Resume with the same settings, or start over without --resume (after removing the run folder).",
            )
    elif run_dir.unfinished():
        raise SlmopsError(
            f"An unfinished run for {config.output!r} has checkpoints in {run_dir.path}.",
            "Pass --resume to continue it, or delete that folder to start over.",
        )


def load_data(config: FinetuneConfig, tokenizer: Any) -> tuple[ExampleSet, list[Example]]:
    """Tokenized training (and evaluation) examples; every data problem is reported at once."""
    opts = dict(
        max_seq_len=config.max_seq_len,
        text_template=config.text_template,
        train_on_prompt=config.train_on_prompt,
        truncation=config.truncation,
    )
    train = build_examples(config.data, tokenizer, **opts)
    if config.eval_data is not None:
        return train, build_examples(config.eval_data, tokenizer, **opts).examples
    if config.eval_split > 0:
        if len(train.examples) < 2:
            raise SlmopsError("--eval-split needs at least 2 examples.", "Add data or pass --eval-data.")
        kept, held = split_eval(train.examples, config.eval_split, config.seed)
        return ExampleSet(kept, train.shapes, train.truncated, train.dropped), held
    return train, []
