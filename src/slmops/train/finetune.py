"""The fine-tuning recipe: full, LoRA or QLoRA, read top to bottom.

``run(config)`` validates the run and the data, loads the base, trains with one visible
loop (AdamW, linear warm-up and decay, gradient accumulation and clipping), evaluates and
checkpoints on its intervals, stops early when evaluation stops improving, and registers
the best weights in the store with their lineage. With a ``teacher`` the training loss mixes
cross-entropy with logit-level KD from that frozen model (:mod:`slmops.train.kd`); evaluation
stays cross-entropy. Callbacks observe; they never steer. Under
``torchrun`` the same loop runs data-parallel (:mod:`slmops.train.distributed`); a
hyper-parameter search (:mod:`slmops.train.search`) calls :func:`train` per trial and
:func:`finish` for the best one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from slmops.errors import SlmopsError
from slmops.models.refs import validate_name
from slmops.models.store import ModelRecord, ModelStore
from slmops.train.batches import collate
from slmops.train.checkpoint import RunDir, Tracker, load_trainable
from slmops.train.config import FinetuneConfig
from slmops.train.distributed import Dist, distributed
from slmops.train.lineage import final_metrics, kd_lineage, register
from slmops.train.model import trainable_parameters, weight_bytes
from slmops.train.reporting import Reporters
from slmops.train.setup import Setup, prepare
from slmops.train.steps import eval_sums, kd_loss_sum, token_loss_sum


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
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "record": self.record.to_dict(), "run_dir": str(self.run_dir)}


def run(
    config: FinetuneConfig,
    *,
    store: ModelStore | None = None,
    progress: Progress | None = None,
    recipe: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Train one configuration and register the result (rank 0 registers; every process returns it).
    ``recipe`` joins the recorded recipe (``distill train`` records its synthetic-data lineage)."""
    if config.search is not None:
        raise SlmopsError("This config asks for a --search.", "Call slmops.train.search(config) instead of run().")
    store = store or ModelStore()
    validate_name(config.output)
    run_dir = RunDir(store.home / "runs" / f"finetune-{config.output}")
    with distributed() as dist:
        show = progress if progress is not None and dist.is_main else _ignore
        reporters = Reporters(config.report_to if dist.is_main else [], run_dir=run_dir.path, home=store.home,
                              run_name=config.output, config=config)  # fmt: skip
        try:
            trained = train(config, store, run_dir, dist=dist, notify=lambda e: (show(e), reporters(e)))
            result = finish(trained, store, dist, recipe)
        except BaseException:
            reporters.close(ok=False)
            raise
        reporters.close(ok=True, metrics=result.record.metrics)
        return result


@dataclass
class Trained:
    """A finished training loop whose model holds its best weights, not yet registered."""

    setup: Setup
    run_dir: RunDir
    tracker: Tracker
    stopped_early: bool
    pruned: bool
    resumed_from: int


def train(
    config: FinetuneConfig,
    store: ModelStore,
    run_dir: RunDir,
    *,
    dist: Dist | None = None,
    notify: Progress | None = None,
    stop_if: Callable[[int, float], bool] | None = None,
    checkpoints: bool = True,
) -> Trained:
    """The training loop. ``stop_if(step, eval_loss)`` is asked after every evaluation (a search
    prunes weak trials with it); ``checkpoints=False`` skips checkpoints (trials are not resumed)."""
    dist = dist or Dist()
    notify = notify or _ignore

    # -- 1. validate the run, then load the base and the data -------------------------------
    s = prepare(config, store, run_dir, dist, status=lambda msg: notify(TrainEvent("status", message=msg)))
    model, plan, total, pad_id = s.model, s.plan, s.total_steps, s.tokenizer.pad_token_id
    teacher, kd = s.teacher, config.kd  # logit KD when a teacher is given (frozen, eval mode)

    # -- 2. optimizer, schedule, and the starting point (fresh or resumed) -------------------
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    tracker = run_dir.load_latest(model, optimizer, scheduler, rank=dist.rank) if config.resume else None
    resumed_from = tracker.step if tracker else 0
    if tracker is None:
        tracker = Tracker()
        if dist.is_main:
            run_dir.start_fresh(config.model_dump(mode="json"))
    dist.barrier()
    notify(TrainEvent("start", step=tracker.step, total_steps=total, message=f"{len(s.train_set.examples)} examples"))

    # -- 3. the training loop -----------------------------------------------------------------
    def step_loss(m: Any, b: Any) -> torch.Tensor:
        return token_loss_sum(m, b) if teacher is None else kd_loss_sum(m, teacher, b, kd)

    ddp = dist.wrap(model, step_loss)  # GPU ranks: DistributedDataParallel sums the gradients
    model.train()
    stopped_early = config.patience is not None and tracker.bad_evals >= config.patience
    pruned = False
    while tracker.step < total and not stopped_early and not pruned:
        t0 = time.perf_counter()
        shards = [dist.shard(plan.micro_batch(tracker.step * config.grad_accum + i)) for i in range(config.grad_accum)]
        micro = [collate(rows, pad_id).to(dist.device) for rows in shards if rows]
        n_targets = max(1.0, dist.sum([sum(b.target_tokens for b in micro)])[0])  # over every process
        loss_value = 0.0
        for i, batch in enumerate(micro):
            if ddp is None:
                loss = step_loss(model, batch) / n_targets
                loss.backward()
                loss_value += loss.item()
            else:
                loss_value += ddp.backward(batch, n_targets, last=i == len(micro) - 1).item() / n_targets
        step_extra = [loss_value, sum(b.tokens for b in micro)]
        loss_value, step_tokens = dist.reduce_grads(params, step_extra) if ddp is None else dist.sum(step_extra)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        tracker.step += 1
        tracker.tokens += int(step_tokens)
        tracker.seconds += time.perf_counter() - t0
        tracker.train_loss = loss_value
        tps = step_tokens / max(time.perf_counter() - t0, 1e-9)
        epoch = round(plan.epoch_of(tracker.step * config.grad_accum), 3)
        if dist.is_main:
            run_dir.log(dict(step=tracker.step, loss=loss_value, lr=lr, grad_norm=float(grad_norm), epoch=epoch,
                             tokens=tracker.tokens, tokens_per_second=round(tps, 1)))  # fmt: skip
        notify(TrainEvent("step", tracker.step, total, loss=loss_value, lr=lr, tokens=tracker.tokens,
                          tokens_per_second=tracker.tokens / tracker.seconds))  # fmt: skip

        if s.eval_examples and (tracker.step % config.eval_interval == 0 or tracker.step == total):
            loss_sum, count = dist.sum(eval_sums(model, s.evals))
            tracker.eval_loss = loss_sum / count if count else math.nan
            if tracker.best_loss is None or tracker.eval_loss < tracker.best_loss:
                tracker.best_loss, tracker.best_step, tracker.bad_evals = tracker.eval_loss, tracker.step, 0
                if dist.is_main:
                    run_dir.save_best(model, tracker.step)
            else:
                tracker.bad_evals += 1
            stopped_early = config.patience is not None and tracker.bad_evals >= config.patience
            if dist.is_main:
                run_dir.log(dict(step=tracker.step, eval_loss=tracker.eval_loss, best_step=tracker.best_step,
                                 perplexity=math.exp(min(tracker.eval_loss, 50))))  # fmt: skip
            notify(TrainEvent("eval", tracker.step, total, eval_loss=tracker.eval_loss))
            pruned = stop_if is not None and tracker.step < total and stop_if(tracker.step, tracker.eval_loss)
        save_now = tracker.step % config.save_interval == 0 or tracker.step == total or stopped_early
        if checkpoints and save_now:
            rng_ranks = dist.gather_rng()
            if dist.is_main:
                run_dir.save(model, optimizer, scheduler, tracker, config.keep_checkpoints, rng_ranks)
            notify(TrainEvent("checkpoint", tracker.step, total))

    # -- 4. back to the best weights ----------------------------------------------------------
    dist.barrier()
    if s.eval_examples and not pruned:
        best = run_dir.best_weights(tracker.best_step)
        if best is None:
            raise SlmopsError(f"The best weights of step {tracker.best_step} are missing from {run_dir.path}.")
        load_trainable(model, best)
    model.eval()
    return Trained(s, run_dir, tracker, stopped_early, pruned, resumed_from)


def finish(
    trained: Trained, store: ModelStore, dist: Dist | None = None, recipe: dict[str, Any] | None = None
) -> FinetuneResult:
    """Register the trained weights with their lineage (rank 0; the others read the record back).
    ``recipe`` adds to the recorded recipe (a search records its space and trials)."""
    dist = dist or Dist()
    s, tracker = trained.setup, trained.tracker
    metrics = final_metrics(tracker)
    extra = {**(recipe or {}), **({"kd": kd_lineage(s.config, s.teacher_ref)} if s.teacher_ref else {})}
    ref = None
    if dist.is_main:
        ref = register(store, s.model, s.tokenizer, s.config, s.resolved, s.base_ref, s.train_set, metrics, extra).ref
    record = store.get(dist.broadcast(ref))
    result = FinetuneResult(
        record=record,
        run_dir=trained.run_dir.path,
        steps=tracker.step,
        train_loss=tracker.train_loss,
        eval_loss=tracker.best_loss,
        perplexity=metrics.get("perplexity"),
        best_step=tracker.best_step,
        stopped_early=trained.stopped_early,
        resumed_from=trained.resumed_from,
        tokens=tracker.tokens,
        seconds=tracker.seconds,
        tokens_per_second=tracker.tokens / tracker.seconds if tracker.seconds else 0.0,
        train_examples=len(s.train_set.examples),
        eval_examples=len(s.eval_examples),
        weight_bytes=weight_bytes(s.model),
        trainable_parameters=trainable_parameters(s.model),
        processes=dist.world,
    )
    if dist.is_main:
        trained.run_dir.write_json("result.json", result.to_dict())
    dist.barrier()
    return result


def _ignore(event: TrainEvent) -> None:
    return None
