"""Logit-level KD in the training loop: the student moves towards the teacher, the loss is the
hand-computed mix, bad teachers are refused before training, and resume stays exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slmops.data.examples import IGNORE, build_examples
from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.models.loader import load_causal_lm
from slmops.train import make_config, run
from slmops.train.batches import collate, make_rows
from tests import test_finetune_train as ft
from tests.test_finetune_train import TEMPLATE, config, losses
from tests.tiny import build_model, build_tokenizer

base_dir, base, data = ft.base_dir, ft.base, ft.data  # the tiny student base and its data


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """Another random model with the same tokenizer and peaked (scaled-up) logits."""
    folder = build_model(tmp_path_factory.mktemp("teacher") / "tiny-teacher", seed=1)
    model, tok = load_causal_lm(folder)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8)
    model.save_pretrained(folder)
    return folder


@pytest.fixture()
def teacher(store, teacher_dir) -> str:
    return import_model(store, teacher_dir, "teacher").ref


def fixed_batch(model_dir: Path, data_file: Path):
    """Every training example in one batch, as the recipe builds it."""
    _, tok = load_causal_lm(model_dir)
    examples = build_examples([data_file], tok, max_seq_len=512, text_template=TEMPLATE).examples
    return collate(make_rows(examples, 512, packing=False, seed=0), tok.pad_token_id)


def answer_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    return logits[batch.targets != IGNORE].double()


def kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean KL(p_T || p_S) per answer token, written out."""
    p_t = teacher_logits.softmax(-1)
    return float((p_t * (teacher_logits.log_softmax(-1) - student_logits.log_softmax(-1))).sum(-1).mean())


def test_kd_alone_moves_the_student_towards_the_teacher(store, base, base_dir, teacher, teacher_dir, data):
    batch = fixed_batch(base_dir, data)
    teacher_out = answer_logits(load_causal_lm(teacher_dir)[0], batch)
    before = kl(teacher_out, answer_logits(load_causal_lm(base_dir)[0], batch))
    res = run(config(data, method="full", lr=3e-3, teacher=teacher, kd_weight=1.0, max_steps=25), store=store)
    student = load_causal_lm(res.record.path)[0]
    after = kl(teacher_out, answer_logits(student, batch))
    assert after < before / 3
    log = losses(res.run_dir)
    assert log[-1] < log[0] / 3  # the logged loss is the KD term alone (weight 1)
    assert log[0] == pytest.approx(before, rel=1e-3)  # ... and starts at the measured divergence
    assert res.record.recipe["kd"] == {"teacher": teacher, "loss": "forward_kl", "temperature": 1.0, "weight": 1.0,
                                       "top_k": None}  # fmt: skip
    assert res.record.recipe["config"]["teacher"] == teacher


def hand_mix(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, loss: str, t: float, w: float,
             top_k: int | None) -> float:  # fmt: skip
    """(1 - w) * CE + w * T^2 * divergence, summed over tokens, from the formulas."""
    log_s, log_t = (student / t).log_softmax(-1), (teacher / t).log_softmax(-1)
    if top_k is not None:  # teacher renormalised on its top k; forward KL keeps the student's full log-probs
        log_t, idx = log_t.topk(top_k, dim=-1)
        log_t = log_t - log_t.logsumexp(-1, keepdim=True)
        log_s = log_s.gather(-1, idx)
    p_s, p_t = log_s.exp(), log_t.exp()
    if loss == "forward_kl":
        div = (p_t * (log_t - log_s)).sum(-1)
    elif loss == "reverse_kl":
        div = (p_s * (log_s - log_t)).sum(-1)
    else:
        log_m = (0.5 * p_t + 0.5 * p_s).log()
        div = 0.5 * (p_t * (log_t - log_m)).sum(-1) + 0.5 * (p_s * (log_s - log_m)).sum(-1)
    ce = F.cross_entropy(student, targets, reduction="sum")
    return float((1 - w) * ce + w * t**2 * div.sum())


@pytest.mark.parametrize(("loss", "temperature", "weight", "top_k"),
                         [("forward_kl", 2.0, 0.3, None), ("jsd", 1.0, 0.5, None), ("reverse_kl", 1.5, 0.7, None),
                          ("forward_kl", 1.0, 0.5, 5)])  # fmt: skip
def test_first_step_loss_is_the_hand_computed_mix(store, base, base_dir, teacher, teacher_dir, data, loss,
                                                  temperature, weight, top_k):  # fmt: skip
    from slmops.train.steps import kd_loss_sum

    batch = fixed_batch(base_dir, data)
    student_m, teacher_m = load_causal_lm(base_dir)[0], load_causal_lm(teacher_dir)[0]
    targets = batch.targets[batch.targets != IGNORE]
    want = hand_mix(answer_logits(student_m, batch), answer_logits(teacher_m, batch), targets, loss, temperature,
                    weight, top_k)  # fmt: skip
    settings = make_config(dict(model="x", data="x", output="x", teacher="t", kd_loss=loss, kd_temperature=temperature,
                                kd_weight=weight, kd_top_k=top_k)).kd  # fmt: skip
    assert float(kd_loss_sum(student_m, teacher_m, batch, settings).detach()) == pytest.approx(want, rel=1e-4)
    res = run(config(data, method="full", teacher=teacher, kd_loss=loss, kd_temperature=temperature, kd_weight=weight,
                     kd_top_k=top_k, max_steps=1), store=store)  # fmt: skip
    assert losses(res.run_dir)[0] == pytest.approx(want / len(targets), rel=1e-4)  # one batch holds every example


def test_evaluation_stays_cross_entropy(store, base, teacher, data):
    values = dict(eval_data=str(data), max_steps=1, lr=1e-9)  # weights barely move: both evaluate the base
    with_kd = run(config(data, teacher=teacher, kd_weight=1.0, output="a", **values), store=store)
    no_kd = run(config(data, output="b", **values), store=store)
    assert with_kd.eval_loss == pytest.approx(no_kd.eval_loss, rel=1e-5)
    assert with_kd.perplexity == pytest.approx(math.exp(with_kd.eval_loss))


def test_bad_teachers_are_refused_before_training(store, base, data, tmp_path, tiny_model_dir):
    other = build_model(tmp_path / "other-vocab", seed=2)
    build_tokenizer(other, vocab_size=300)  # same architecture, another tokenizer
    import_model(store, other, "other")
    with pytest.raises(SlmopsError, match=r"teacher other:1 and the student tiny:1 do not share a tokenizer \(the "
                                          r"teacher has 300 tokens, the student 400\).*same model family"):  # fmt: skip
        run(config(data, teacher="other"), store=store)
    with pytest.raises(SlmopsError, match="remote endpoint.*distill generate --teacher URL"):
        run(config(data, teacher="http://127.0.0.1:9/v1#big"), store=store)
    with pytest.raises(SlmopsError, match="nobody"):
        run(config(data, teacher="nobody"), store=store)
    with pytest.raises(SlmopsError, match="--kd-loss, --kd-weight only apply with a --teacher"):
        config(data, kd_loss="jsd", kd_weight=0.9)
    assert not (store.home / "runs" / "finetune-qa" / "config.json").exists()


class Stop(Exception):
    pass


def test_resume_with_kd_gives_the_same_losses(store, base, teacher, data):
    values = dict(method="lora", teacher=teacher, kd_loss="jsd", kd_weight=0.5, kd_temperature=2.0, batch_size=2,
                  max_steps=8, lora_dropout=0.1, save_interval=4, eval_split=0.34, eval_interval=4)  # fmt: skip

    def stop_at_4(event):
        if event.kind == "checkpoint" and event.step == 4:
            raise Stop

    with pytest.raises(Stop):
        run(config(data, output="cut", **values), store=store, progress=stop_at_4)
    with pytest.raises(SlmopsError, match="differ from the interrupted run: kd_weight, teacher"):
        run(config(data, output="cut", resume=True, **{**values, "kd_weight": 0.9, "teacher": base}), store=store)
    resumed = run(config(data, output="cut", resume=True, **values), store=store)
    straight = run(config(data, output="straight", **values), store=store)
    assert resumed.resumed_from == 4
    assert losses(resumed.run_dir) == pytest.approx(losses(straight.run_dir), rel=1e-5)
    assert losses(resumed.run_dir, "eval_loss") == pytest.approx(losses(straight.run_dir, "eval_loss"), rel=1e-5)
