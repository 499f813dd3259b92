"""Logit-level knowledge distillation losses, as pure functions of logits.

Shapes: logits ``[..., V]`` (e.g. ``[batch, seq, vocab]``), targets ``[...]`` with
``ignore_index`` (-100) on tokens that are not trained (prompt, padding). Position ``i`` of
the logits predicts ``targets[i]`` (the targets are already shifted, as the training loop's
batches hold them).

* ``forward_kl``  KL(p_T ‖ p_S): mean-seeking, the classic Hinton loss.
* ``reverse_kl``  KL(p_S ‖ p_T): mode-seeking (MiniLLM).
* ``jsd``         generalised Jensen-Shannon with mixture ``m = β·p_T + (1-β)·p_S``:
  ``β·KL(p_T ‖ m) + (1-β)·KL(p_S ‖ m)`` (GKD; ``β = 0.5`` is the symmetric JSD).

Both distributions are softened by the temperature ``T`` and the divergence is multiplied by
``T²`` so its gradients keep their scale as ``T`` changes (Hinton et al., 2015). The mixed loss
is ``alpha · KD + (1 - alpha) · CE`` (CE on the hard targets at temperature 1).

Teacher logits can be cached as the top-k log-probabilities per position
(:func:`teacher_top_k`); :func:`top_k_divergence` then approximates the divergence on the
teacher's top-k support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KDLoss = Literal["forward_kl", "reverse_kl", "jsd"]
KD_LOSSES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class KDSettings:
    """The KD part of a training config."""

    loss: KDLoss = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the KD term; 1 - alpha goes to cross-entropy
    beta: float = 0.5  # JSD mixture weight of the teacher
    top_k: int | None = None  # cache the teacher as top-k log-probs instead of full logits

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in KD_LOSSES:
            problems.append(f"loss must be one of {', '.join(KD_LOSSES)} (got {self.loss!r})")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if not 0 <= self.alpha <= 1:
            problems.append(f"alpha must be in [0, 1] (got {self.alpha})")
        if not 0 < self.beta < 1:
            problems.append(f"beta must be in (0, 1) (got {self.beta})")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be >= 1 (got {self.top_k})")
        if problems:
            raise ValueError("Invalid KD settings: " + "; ".join(problems) + ".")


def common_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut both to the shared vocabulary size: models with the same tokenizer often pad their
    embedding matrices to different sizes, and the padded rows are never real tokens."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :v], teacher_logits[..., :v]


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis, from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def _divergence(log_s: torch.Tensor, log_t: torch.Tensor, loss: KDLoss, beta: float) -> torch.Tensor:
    if loss == "forward_kl":
        return _kl(log_t, log_s)
    if loss == "reverse_kl":
        return _kl(log_s, log_t)
    if loss == "jsd":
        log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1 - beta)]), dim=0)
        return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    raise ValueError(f"unknown KD loss {loss!r}; use one of {', '.join(KD_LOSSES)}")


def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, loss: KDLoss = "forward_kl",
    temperature: float = 1.0, beta: float = 0.5,
) -> torch.Tensor:
    """The divergence at every position (shape ``logits.shape[:-1]``), times ``T²``."""
    student_logits, teacher_logits = common_vocab(student_logits, teacher_logits)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return _divergence(log_s, log_t, loss, beta) * temperature**2


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, settings: KDSettings,
    *, reduction: Literal["mean", "sum"] = "mean", ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``alpha · KD + (1 - alpha) · CE`` over the trained positions (``targets != ignore_index``).

    ``reduction="sum"`` matches the training loop's ``token_loss_sum`` (it divides by the
    number of target tokens itself, across micro-batches); ``"mean"`` divides here.
    """
    mask = targets != ignore_index
    kd = token_divergence(student_logits, teacher_logits, loss=settings.loss, temperature=settings.temperature,
                          beta=settings.beta)[mask].sum()
    return _mix(kd, student_logits, targets, mask, settings, reduction, ignore_index)


@dataclass(frozen=True)
class TopK:
    """Cached teacher: log-probabilities (at the KD temperature) and token ids of the top k."""

    log_probs: torch.Tensor  # [..., k]
    indices: torch.Tensor  # [..., k]


def teacher_top_k(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, indices = log_t.topk(min(k, log_t.shape[-1]), dim=-1)
    return TopK(values, indices)


def top_k_divergence(
    student_logits: torch.Tensor, cached: TopK, *, loss: KDLoss = "forward_kl", temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence on the teacher's top-k tokens, times ``T²``.

    The teacher is renormalised over its k tokens. Forward KL keeps the student's full-vocabulary
    log-probabilities there (so mass the student puts elsewhere is still penalised); reverse KL
    and JSD renormalise the student over the same k tokens, as they need two distributions on
    one support. With ``k = V`` all three equal :func:`token_divergence`.
    """
    log_t = cached.log_probs - torch.logsumexp(cached.log_probs, dim=-1, keepdim=True)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, cached.indices)
    if loss != "forward_kl":
        log_s = log_s - torch.logsumexp(log_s, dim=-1, keepdim=True)
    return _divergence(log_s, log_t, loss, beta) * temperature**2


def top_k_distillation_loss(
    student_logits: torch.Tensor, cached: TopK, targets: torch.Tensor, settings: KDSettings,
    *, reduction: Literal["mean", "sum"] = "mean", ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """:func:`distillation_loss` with a top-k cached teacher."""
    mask = targets != ignore_index
    kd = top_k_divergence(student_logits, cached, loss=settings.loss, temperature=settings.temperature,
                          beta=settings.beta)[mask].sum()
    return _mix(kd, student_logits, targets, mask, settings, reduction, ignore_index)


def _mix(
    kd_sum: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
    settings: KDSettings, reduction: str, ignore_index: int,
) -> torch.Tensor:
    logits = student_logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
                         reduction="sum")
    total = settings.alpha * kd_sum + (1 - settings.alpha) * ce
    return total / mask.sum().clamp(min=1) if reduction == "mean" else total
