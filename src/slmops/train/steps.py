"""The loss of one batch (cross-entropy, or mixed with logit KD from a teacher), and
evaluation over a fixed set of batches.

The vocabulary projection is the widest layer of a small model (SmolLM2-135M: 49,152 x 576)
and cross-entropy over it is memory-bound, so the loss runs the decoder stack, keeps only the
hidden states of positions that carry a target (answer tokens; padding and prompt tokens carry
none) and projects just those. The numbers are those of the full forward; time and memory
drop with the share of untrained positions.

When every row of a batch is one example and the rows start with the same tokens (a system
prompt, a fixed instruction: the chat template alone often makes dozens), that shared prefix
runs once and its keys and values are broadcast to every row, whose own tokens then attend to
them: the same attention, with the prefix computed once instead of once per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from slmops.data.examples import IGNORE
from slmops.train.batches import Batch
from slmops.train.kd import KDSettings, distillation_loss, teacher_top_k, top_k_distillation_loss

# architectures whose causal-LM forward is exactly ``lm_head(model(...).last_hidden_state)``
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "phi3", "olmo2", "smollm3"})


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The decoder stack and output projection of a causal LM (through a PEFT wrapper), or None
    for other architectures, whose forward may do more (e.g. logit soft-capping or scaling)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD or getattr(config, "final_logit_softcapping", None):
        return None
    decoder = getattr(lm, "model", None)
    head = lm.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def target_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Float logits ``[N, V]`` at the batch's N target positions, in row-major order."""
    keep = batch.targets != IGNORE
    parts = _decoder_and_head(model)
    if parts is None:
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        return out.logits[keep].float()
    decoder, head = parts
    hidden = _hidden_shared(decoder, batch) if _shared_prefix(decoder, batch) else None
    if hidden is None:
        hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return head(hidden[keep]).float()


def token_loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (the caller divides by the count,
    so every trained token weighs the same across micro-batches, accumulation and processes)."""
    targets = batch.targets[batch.targets != IGNORE]
    return torch.nn.functional.cross_entropy(target_logits(model, batch), targets, reduction="sum")


def kd_loss_sum(model: Any, teacher: Any, batch: Batch, kd: KDSettings) -> torch.Tensor:
    """Summed ``(1 - w) * CE + w * KD`` over the target tokens: the frozen teacher reads the same
    batch (no gradients) and the divergence is taken where cross-entropy is, on the answer
    tokens only; ``kd.top_k`` keeps just the teacher's k most likely tokens per position."""
    targets = batch.targets[batch.targets != IGNORE]
    student = target_logits(model, batch)
    with torch.no_grad():
        teacher_logits = target_logits(teacher, batch)
    if kd.top_k is not None:
        cached = teacher_top_k(teacher_logits[:, : student.shape[-1]], kd.top_k, kd.temperature)
        return top_k_distillation_loss(student, cached, targets, kd, reduction="sum")
    return distillation_loss(student, teacher_logits, targets, kd, reduction="sum")


@torch.no_grad()
def eval_sums(model: Any, batches: Sequence[Batch]) -> tuple[float, int]:
    """Summed loss and target-token count over these batches."""
    was_training = model.training
    model.eval()
    total = sum(float(token_loss_sum(model, b)) for b in batches)
    count = sum(b.target_tokens for b in batches)
    if was_training:
        model.train()
    return total, count


def evaluate(model: Any, batches: Sequence[Batch]) -> float:
    """Mean loss per target token over every evaluation batch (perplexity is its exp)."""
    total, count = eval_sums(model, batches)
    return total / count if count else math.nan


MIN_SHARED = 8  # shorter shared prefixes are not worth a second pass


def _shared_prefix(decoder: Any, batch: Batch) -> int:
    """Tokens (ids and positions) that every row starts with, when worth sharing; else 0."""
    if batch.lengths is None or len(batch.lengths) < 2 or getattr(decoder, "gradient_checkpointing", False):
        return 0
    ids, pos = batch.input_ids, batch.position_ids
    same = ((ids == ids[:1]) & (pos == pos[:1])).all(dim=0)
    shared = min(int(same.int().cumprod(0).sum()), min(batch.lengths) - 1)
    return shared if shared >= MIN_SHARED else 0


def _hidden_shared(decoder: Any, batch: Batch) -> torch.Tensor | None:
    """Hidden states of the whole batch, computing the shared prefix once (None if the cache
    cannot be shared, e.g. sliding-window layers)."""
    from transformers.cache_utils import DynamicLayer

    n = _shared_prefix(decoder, batch)
    rows = batch.input_ids.shape[0]
    ids, pos = batch.input_ids, batch.position_ids
    head = decoder(input_ids=ids[:1, :n], position_ids=pos[:1, :n], use_cache=True)
    cache = head.cache
    if cache is None or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    for layer in cache.layers:  # every row sees the same prefix keys and values (gradients add up)
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    lengths = torch.tensor(batch.lengths, device=ids.device)
    mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
    tail = decoder(input_ids=ids[:, n:], position_ids=pos[:, n:], attention_mask=mask, cache=cache, use_cache=True)
    return torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
