"""The fine-tuning recipe: full, LoRA or QLoRA, read top to bottom.

``run(config)`` validates the run and the data, loads the base, trains with one visible
loop (AdamW, linear warm-up and decay, gradient accumulation and clipping), evaluates and
checkpoints on its intervals, stops early when evaluation stops improving, and registers
the best weights in the store with their lineage. Callbacks observe; they never steer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from slmops.data.examples import ExampleSet, build_examples
from slmops.errors import SlmopsError
from slmops.models.refs import validate_name
from slmops.models.resolve import resolve
from slmops.models.store import ModelRecord, ModelStore
from slmops.train.batches import BatchPlan, collate, eval_batches, make_rows, split_eval
from slmops.train.checkpoint import RunDir, Tracker, load_trainable
from slmops.train.config import RESUMABLE_CHANGES, FinetuneConfig
from slmops.train.lineage import final_metrics, register
from slmops.train.model import load_for_training, load_tokenizer, trainable_parameters, weight_bytes
from slmops.train.steps import evaluate, token_loss_sum


@dataclass(frozen=True)
class TrainEvent:
    """What the recipe reports to its observer (progress bar, logs)."""

    kind: str  # "status" | "start" | "step" | "eval" | "checkpoint"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    lr: float = 0.0
    tokens: int = 0
    tokens_per_second: float = 0.0
    message: str = ""


Progress = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class FinetuneResult:
    record: ModelRecord
    run_dir: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    perplexity: float | None
    best_step: int
    stopped_early: bool
    resumed_from: int
    tokens: int
    seconds: float
    tokens_per_second: float
    train_examples: int
    eval_examples: int
    weight_bytes: int
    trainable_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "record": self.record.to_dict(), "run_dir": str(self.run_dir)}


def run(config: FinetuneConfig, store: ModelStore | None = None, progress: Progress | None = None) -> FinetuneResult:
    store = store or ModelStore()
    notify = progress or (lambda event: None)

    # -- 1. validate the run, then load the base and the data -------------------------------
    validate_name(config.output)
    run_dir = RunDir(store.home / "runs" / f"finetune-{config.output}")
    check_run_dir(run_dir, config)
    resolved = resolve(config.model, store, progress=lambda msg: notify(TrainEvent("status", message=msg)))
    base_ref = resolved.record.ref if resolved.record else None
    if config.lora and base_ref is None:
        raise SlmopsError(
            f"A LoRA adapter needs its base model in the store, and {config.model} is a path.",
            f"Import it first: `slmops models import {config.model} --name NAME`, then --model NAME.",
        )
    tokenizer = load_tokenizer(resolved)
    train_set, eval_examples = load_data(config, tokenizer)
    notify(TrainEvent("status", message=f"loading {resolved.label} for {config.method} fine-tuning"))
    torch.manual_seed(config.seed)  # LoRA initialisation, dropout
    model = load_for_training(resolved, config)
    pad_id = tokenizer.pad_token_id
    plan = BatchPlan(
        make_rows(train_set.examples, config.max_seq_len, packing=config.packing, seed=config.seed),
        config.batch_size,
        config.seed,
    )
    evals = eval_batches(eval_examples, config.max_seq_len, config.batch_size, pad_id) if eval_examples else []
    total = config.max_steps or math.ceil(config.epochs * plan.per_epoch / config.grad_accum)

    # -- 2. optimizer, schedule, and the starting point (fresh or resumed) -------------------
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    tracker = run_dir.load_latest(model, optimizer, scheduler) if config.resume else None
    resumed_from = tracker.step if tracker else 0
    if tracker is None:
        tracker = Tracker()
        run_dir.start_fresh(config.model_dump(mode="json"))
    notify(TrainEvent("start", step=tracker.step, total_steps=total, message=f"{len(train_set.examples)} examples"))

    # -- 3. the training loop -----------------------------------------------------------------
    model.train()
    stopped_early = config.patience is not None and tracker.bad_evals >= config.patience
    while tracker.step < total and not stopped_early:
        t0 = time.perf_counter()
        micro = [
            collate(plan.micro_batch(tracker.step * config.grad_accum + i), pad_id) for i in range(config.grad_accum)
        ]
        n_targets = max(1, sum(b.target_tokens for b in micro))
        loss_value = 0.0
        for batch in micro:
            loss = token_loss_sum(model, batch) / n_targets
            loss.backward()
            loss_value += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        tracker.step += 1
        step_tokens = sum(b.tokens for b in micro)
        tracker.tokens += step_tokens
        tracker.seconds += time.perf_counter() - t0
        tracker.train_loss = loss_value
        tps = step_tokens / max(time.perf_counter() - t0, 1e-9)
        epoch = round(plan.epoch_of(tracker.step * config.grad_accum), 3)
        run_dir.log(dict(step=tracker.step, loss=loss_value, lr=lr, grad_norm=float(grad_norm), epoch=epoch,
                         tokens=tracker.tokens, tokens_per_second=round(tps, 1)))  # fmt: skip
        notify(TrainEvent("step", tracker.step, total, loss=loss_value, lr=lr, tokens=tracker.tokens,
                          tokens_per_second=tracker.tokens / tracker.seconds))  # fmt: skip

        if evals and (tracker.step % config.eval_interval == 0 or tracker.step == total):
            tracker.eval_loss = evaluate(model, evals)
            if tracker.best_loss is None or tracker.eval_loss < tracker.best_loss:
                tracker.best_loss, tracker.best_step, tracker.bad_evals = tracker.eval_loss, tracker.step, 0
                run_dir.save_best(model, tracker.step)
            else:
                tracker.bad_evals += 1
            stopped_early = config.patience is not None and tracker.bad_evals >= config.patience
            run_dir.log(dict(step=tracker.step, eval_loss=tracker.eval_loss, best_step=tracker.best_step,
                             perplexity=math.exp(min(tracker.eval_loss, 50))))  # fmt: skip
            notify(TrainEvent("eval", tracker.step, total, eval_loss=tracker.eval_loss))
        if tracker.step % config.save_interval == 0 or tracker.step == total or stopped_early:
            run_dir.save(model, optimizer, scheduler, tracker, config.keep_checkpoints)
            notify(TrainEvent("checkpoint", tracker.step, total))

    # -- 4. register the best weights with their lineage --------------------------------------
    if evals:
        best = run_dir.best_weights(tracker.best_step)
        if best is None:
            raise SlmopsError(f"The best weights of step {tracker.best_step} are missing from {run_dir.path}.")
        load_trainable(model, best)
    model.eval()
    metrics = final_metrics(tracker)
    record = register(store, model, tokenizer, config, resolved, base_ref, train_set, metrics)
    result = FinetuneResult(
        record=record,
        run_dir=run_dir.path,
        steps=tracker.step,
        train_loss=tracker.train_loss,
        eval_loss=tracker.best_loss,
        perplexity=metrics.get("perplexity"),
        best_step=tracker.best_step,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        tokens=tracker.tokens,
        seconds=tracker.seconds,
        tokens_per_second=tracker.tokens / tracker.seconds if tracker.seconds else 0.0,
        train_examples=len(train_set.examples),
        eval_examples=len(eval_examples),
        weight_bytes=weight_bytes(model),
        trainable_parameters=trainable_parameters(model),
    )
    run_dir.write_json("result.json", result.to_dict())
    return result


# -- the recipe's components ------------------------------------------------------------------
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


def load_data(config: FinetuneConfig, tokenizer: Any) -> tuple[ExampleSet, list]:
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
