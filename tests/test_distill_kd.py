"""KD losses against values computed by hand on two-token vocabularies.

Student logits [0, 0] give p_S = (1/2, 1/2); teacher logits [ln 3, 0] give p_T = (3/4, 1/4).
  forward KL = 3/4·ln(3/2) + 1/4·ln(1/2)                          = 0.1308121
  reverse KL = 1/2·ln(2/3) + 1/2·ln(2)                            = 0.1438410
  JSD (β=½)  : m = (5/8, 3/8); ½·[3/4·ln(6/5) + 1/4·ln(2/3)] + ½·[1/2·ln(4/5) + 1/2·ln(4/3)] = 0.0338221
"""

from __future__ import annotations

import math

import pytest
import torch

from slmops.train.kd import (
    KDSettings,
    distillation_loss,
    teacher_top_k,
    token_divergence,
    top_k_distillation_loss,
    top_k_divergence,
)

FORWARD = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
REVERSE = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
JSD = 0.5 * (0.75 * math.log(1.2) + 0.25 * math.log(2 / 3)) + 0.5 * (0.5 * math.log(0.8) + 0.5 * math.log(4 / 3))
S = torch.tensor([[0.0, 0.0]])
T = torch.tensor([[math.log(3), 0.0]])


def test_hand_computed_constants() -> None:
    assert pytest.approx(0.1308121, abs=1e-7) == FORWARD
    assert pytest.approx(0.1438410, abs=1e-7) == REVERSE
    assert pytest.approx(0.0338221, abs=1e-7) == JSD


@pytest.mark.parametrize(("loss", "want"), [("forward_kl", FORWARD), ("reverse_kl", REVERSE), ("jsd", JSD)])
def test_divergences_match_hand_values(loss: str, want: float) -> None:
    assert token_divergence(S, T, loss=loss).item() == pytest.approx(want, rel=1e-5)
    assert token_divergence(T, T, loss=loss).item() == pytest.approx(0.0, abs=1e-7)  # identical: zero


def test_temperature_softens_and_scales_by_t_squared() -> None:
    # teacher logits [2 ln 3, 0] at T = 2 are p_T = (3/4, 1/4) again; the loss is scaled by T² = 4
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    assert token_divergence(S, teacher, temperature=2.0).item() == pytest.approx(4 * FORWARD, rel=1e-5)


def test_jsd_beta_weights_the_mixture() -> None:
    beta = 0.9  # m = 0.9·p_T + 0.1·p_S = (0.725, 0.275)
    m = (0.725, 0.275)
    kl_t = 0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])
    kl_s = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    want = beta * kl_t + (1 - beta) * kl_s
    assert token_divergence(S, T, loss="jsd", beta=beta).item() == pytest.approx(want, rel=1e-5)


def test_mixed_with_cross_entropy_on_trained_tokens_only() -> None:
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # second position is ignored (prompt)
    teacher = torch.tensor([[[math.log(3), 0.0], [-5.0, 5.0]]])
    targets = torch.tensor([[0, -100]])
    ce = math.log(2)  # -ln p_S(token 0) = -ln 1/2
    settings = KDSettings(alpha=0.25)
    want = 0.25 * FORWARD + 0.75 * ce
    assert distillation_loss(student, teacher, targets, settings).item() == pytest.approx(want, rel=1e-5)
    two = torch.cat([student, student]), torch.cat([teacher, teacher]), torch.cat([targets, targets])
    assert distillation_loss(*two, settings, reduction="sum").item() == pytest.approx(2 * want, rel=1e-5)
    assert distillation_loss(*two, settings).item() == pytest.approx(want, rel=1e-5)  # mean over 2 tokens
    pure_ce = distillation_loss(student, teacher, targets, KDSettings(alpha=0.0))
    assert pure_ce.item() == pytest.approx(ce, rel=1e-5)


def test_padded_vocabularies_are_cut_to_the_shared_size() -> None:
    padded = torch.cat([T, torch.tensor([[7.0]])], dim=-1)  # an extra padded row in the teacher
    assert token_divergence(S, padded).item() == pytest.approx(FORWARD, rel=1e-5)


def test_top_k_with_the_whole_vocabulary_equals_the_full_loss() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    for loss in ("forward_kl", "reverse_kl", "jsd"):
        cached = teacher_top_k(teacher, 11, temperature=2.0)
        full = token_divergence(student, teacher, loss=loss, temperature=2.0)
        assert torch.allclose(top_k_divergence(student, cached, loss=loss, temperature=2.0), full, atol=1e-5)


def test_top_k_renormalises_the_teacher() -> None:
    # teacher (3/4, 1/4, ~0): its top-2 renormalised is (3/4, 1/4); student uniform over 3 tokens
    teacher = torch.tensor([[math.log(3), 0.0, -30.0]])
    student = torch.zeros(1, 3)
    want = 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3)  # KL against p_S = 1/3 on the support
    cached = teacher_top_k(teacher, 2)
    assert cached.indices.tolist() == [[0, 1]]
    assert top_k_divergence(student, cached).item() == pytest.approx(want, rel=1e-5)
    targets = torch.tensor([0])
    mixed = top_k_distillation_loss(student, cached, targets, KDSettings(alpha=0.5))
    assert mixed.item() == pytest.approx(0.5 * want + 0.5 * math.log(3), rel=1e-5)


def test_gradients_flow_to_the_student_only() -> None:
    student = torch.zeros(1, 2, requires_grad=True)
    loss = distillation_loss(student, T, torch.tensor([0]), KDSettings(alpha=1.0))
    loss.backward()
    # d KL(p_T || p_S) / d z_S = p_S - p_T = (1/2 - 3/4, 1/2 - 1/4)
    assert student.grad is not None
    assert student.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)


def test_bad_settings_are_reported_together() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0.*alpha must be in"):
        KDSettings(temperature=0, alpha=2)
