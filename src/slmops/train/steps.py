"""The loss of one batch, and evaluation over a fixed set of batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from slmops.data.examples import IGNORE
from slmops.train.batches import Batch


def token_loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (the caller divides by the count,
    so every trained token weighs the same across micro-batches and accumulation)."""
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    logits = out.logits.float()
    return torch.nn.functional.cross_entropy(
        logits.view(-1, logits.shape[-1]), batch.targets.view(-1), ignore_index=IGNORE, reduction="sum"
    )


@torch.no_grad()
def evaluate(model: Any, batches: Sequence[Batch]) -> float:
    """Mean loss per target token over every evaluation batch (perplexity is its exp)."""
    was_training = model.training
    model.eval()
    total = sum(float(token_loss_sum(model, b)) for b in batches)
    count = sum(b.target_tokens for b in batches)
    if was_training:
        model.train()
    return total / count if count else math.nan
