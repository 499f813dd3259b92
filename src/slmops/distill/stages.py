"""The two-stage distillation both ``slmops distill run`` and the pipeline's ``distill`` step
call: stage 1, the teacher answers the prompts (:func:`~slmops.distill.generate.run_generate`,
resumable); the answers are checked (none accepted stops here, naming the rejection reasons);
stage 2, the student trains on the accepted answers (:func:`~slmops.distill.train.run_train`),
resuming an interrupted training of the same output."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slmops.distill.config import GenerateConfig
from slmops.distill.generate import GenerateResult, run_generate
from slmops.distill.train import DistillTrainConfig, DistillTrainResult, run_train
from slmops.errors import SlmopsError
from slmops.models.store import ModelStore


@dataclass(frozen=True)
class TwoStageResult:
    generate: GenerateResult
    train: DistillTrainResult
    generate_seconds: float
    train_seconds: float

    @property
    def accepted(self) -> int:
        return self.generate.counts.get("accepted", 0)

    @property
    def rejected(self) -> int:
        return sum(v for k, v in self.generate.counts.items() if k != "accepted")


def training_unfinished(store: ModelStore, output: str) -> bool:
    """An interrupted training of ``output`` left checkpoints in the trainer's run folder."""
    from slmops.train.checkpoint import RunDir

    return RunDir(store.home / "runs" / f"finetune-{output}").unfinished()


def generate_then_train(
    gen: GenerateConfig,
    student: str,
    output: str,
    *,
    train_options: dict[str, Any],
    store: ModelStore,
    on_generate: Callable[[Any], None] | None = None,
    on_train: Callable[[Any], None] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> TwoStageResult:
    """Stage 1, check, stage 2; ``train_options`` are FinetuneConfig fields (method, max_steps, ...)."""
    say(f"stage 1: {gen.teacher} answers {gen.data}")
    t0 = time.perf_counter()
    g = run_generate(gen, store=store, progress=on_generate)
    t1 = time.perf_counter()
    accepted = g.counts.get("accepted", 0)
    if not accepted:
        rejected = ", ".join(f"{k} {v}" for k, v in g.counts.items() if k != "accepted") or "no prompts"
        raise SlmopsError(f"The teacher {gen.teacher} gave no usable answer ({rejected}); the student cannot train.",
                          f"See the reasons in {g.rejected_file}; check the teacher, the labels, the prompt "
                          "and max_tokens.")
    resume = training_unfinished(store, output)
    say(f"stage 2: {student} learns {accepted} accepted answers" + (" (resuming)" if resume else ""))
    config = DistillTrainConfig(student, (g.output,), output, {**train_options, "resume": resume})
    t = run_train(config, store=store, progress=on_train)
    return TwoStageResult(g, t, t1 - t0, time.perf_counter() - t1)
