"""Training examples: the three record shapes, answer-only masking, packing, and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slmops.data.examples import IGNORE, TextTemplate, build_examples
from slmops.errors import DataError
from slmops.train.batches import BatchPlan, collate, make_rows
from slmops.train.steps import token_loss_sum

TEMPLATE = "Q: {question}\nA: {answer}"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from slmops.models.loader import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def decode_trained(tok, ex) -> str:
    return tok.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE])


def test_template_splits_at_last_placeholder_and_masks_the_prompt(tmp_path, tok):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What is two plus two?", "answer": "Four", "id": 3}])
    ex = build_examples(data, tok, max_seq_len=64, text_template=TEMPLATE).examples[0]
    prompt_ids = tok("Q: What is two plus two?\nA: ")["input_ids"]
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert ex.input_ids[-1] == tok.eos_token_id
    assert decode_trained(tok, ex) == "Four<|im_end|>"
    assert ex.where == f"{data}, line 1"
    everything = build_examples(data, tok, max_seq_len=64, text_template=TEMPLATE, train_on_prompt=True).examples[0]
    assert everything.labels == everything.input_ids


def test_template_parts():
    t = TextTemplate("### {instruction} ({lang})\n### Answer: {output} END")
    rec = {"instruction": "Say hi", "lang": "en", "output": "hi"}
    assert t.pieces(rec) == [("### Say hi (en)\n### Answer: ", False), ("hi END", True)]
    with pytest.raises(DataError, match="placeholders"):
        TextTemplate("no fields here")


def test_chat_records_train_on_every_assistant_turn_only(tmp_path, tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}])
    ex = build_examples(data, tok, max_seq_len=128).examples[0]
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(msgs, tokenize=False)
    assert decode_trained(tok, ex) == "Hi!<|im_end|>\nParis.<|im_end|>\n"


def test_prompt_completion_pairs_use_the_chat_template(tmp_path, tok):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hello", "completion": "world"}])
    ex = build_examples(data, tok, max_seq_len=64).examples[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False)
    assert tok.decode(ex.input_ids).startswith(prompt)
    assert decode_trained(tok, ex) == "world<|im_end|>\n"


def test_every_problem_is_reported_at_once_with_file_and_row(tmp_path, tok):
    rows = [
        {"question": "ok", "answer": "fine"},
        {"question": "no answer here"},
        {"question": ["a", "list"], "answer": "x"},
        {"question": "long " * 80, "answer": "y"},
        {"question": "long " * 90, "answer": "z"},
    ]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        build_examples(data, tok, max_seq_len=32, text_template=TEMPLATE)
    msg = str(err.value)
    assert "3 problem(s)" in msg  # the long rows are one counted problem
    assert f"{data}, line 2: template field 'answer' is missing" in msg
    assert f"{data}, line 3: field 'question' must be text or a number, not list" in msg
    assert f"2 example(s) are longer than --max-seq-len 32: {data}, line 4" in msg
    assert "--truncation drop" in msg


def test_shape_and_type_errors(tmp_path, tok):
    rows = [
        {"text": "neither shape"},
        {"prompt": "p", "completion": 3},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "?"}]},
    ]
    data = write_jsonl(tmp_path / "shapes.jsonl", rows)
    with pytest.raises(DataError) as err:
        build_examples(data, tok, max_seq_len=64)
    msg = str(err.value)
    assert "line 1: no 'messages', no 'prompt'+'completion'" in msg
    assert "line 2: 'completion' must be a string, not int" in msg
    assert "line 3: 'messages' has no assistant turn" in msg
    assert "line 4: messages[0] must be an object with a role" in msg


def test_empty_file_and_truncation_modes(tmp_path, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        build_examples(empty, tok, max_seq_len=64, text_template=TEMPLATE)
    rows = [{"question": "q", "answer": "short"}, {"question": "q", "answer": "x " * 60}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    dropped = build_examples(data, tok, max_seq_len=24, text_template=TEMPLATE, truncation="drop")
    assert (len(dropped.examples), dropped.dropped) == (1, 1)
    cut = build_examples(data, tok, max_seq_len=24, text_template=TEMPLATE, truncation="truncate")
    assert cut.truncated == 1 and max(len(e) for e in cut.examples) == 24
    with pytest.raises(DataError, match="no examples are left"):
        build_examples(data, tok, max_seq_len=8, text_template=TEMPLATE, truncation="drop")


def test_packing_keeps_examples_separate(tmp_path, tok, tiny_model_dir):
    from slmops.models.loader import load_causal_lm

    model, _ = load_causal_lm(tiny_model_dir)
    model.eval()
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i} is the answer"} for i in range(5)]
    examples = build_examples(write_jsonl(tmp_path / "p.jsonl", rows), tok, max_seq_len=512, text_template=TEMPLATE)
    packed_rows = make_rows(examples.examples, 512, packing=True, seed=0)
    assert len(packed_rows) == 1 and len(packed_rows[0]) == 5
    with torch.no_grad():
        packed = collate(packed_rows, tok.pad_token_id)
        one_by_one = [collate([(e,)], tok.pad_token_id) for e in examples.examples]
        assert packed.target_tokens == sum(b.target_tokens for b in one_by_one)
        assert float(token_loss_sum(model, packed)) == pytest.approx(
            sum(float(token_loss_sum(model, b)) for b in one_by_one), rel=1e-5
        )
        # padding rows in a batch change nothing either
        padded = collate([(examples.examples[0],), (examples.examples[1], examples.examples[2])], tok.pad_token_id)
        alone = sum(float(token_loss_sum(model, b)) for b in one_by_one[:3])
        assert float(token_loss_sum(model, padded)) == pytest.approx(alone, rel=1e-5)
    # a target never crosses from one example into the next
    first = len(examples.examples[0])
    assert packed.targets[0, first - 1] == IGNORE and packed.position_ids[0, first] == 0


def test_batch_order_depends_only_on_seed_and_step(tmp_path, tok):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    ex = build_examples(write_jsonl(tmp_path / "o.jsonl", rows), tok, max_seq_len=64, text_template=TEMPLATE)
    plan = BatchPlan(make_rows(ex.examples, 64, packing=False, seed=1), 3, seed=7)
    again = BatchPlan(make_rows(ex.examples, 64, packing=False, seed=1), 3, seed=7)
    seq = [[r[0].where for r in plan.micro_batch(k)] for k in range(8)]
    assert [[r[0].where for r in again.micro_batch(k)] for k in (5, 2, 7)] == [seq[5], seq[2], seq[7]]
    assert plan.per_epoch == 3 and seq[:3] != seq[3:6]


def test_a_shared_prefix_runs_once_with_the_same_loss_and_gradients(tmp_path, tok, tiny_model_dir):
    from slmops.models.loader import load_causal_lm
    from slmops.train import steps

    model, _ = load_causal_lm(tiny_model_dir)
    model.train()
    tickets = [("my card was charged twice", "billing"), ("the app crashes", "tech"), ("hello", "other")]
    rows = [{"prompt": f"You are a router. Route this ticket to a team: {t}", "completion": a} for t, a in tickets]
    examples = build_examples(write_jsonl(tmp_path / "r.jsonl", rows), tok, max_seq_len=128).examples
    batch = collate([(e,) for e in examples], tok.pad_token_id)
    assert batch.lengths == tuple(len(e) for e in examples)
    assert steps._shared_prefix(model.model, batch) >= steps.MIN_SHARED  # chat template + instruction

    def loss_and_grads():
        model.zero_grad()
        loss = steps.token_loss_sum(model, batch)
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters()]

    shared = loss_and_grads()
    calls = []
    model.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    steps.MIN_SHARED, saved = 10**6, steps.MIN_SHARED  # force the plain forward
    try:
        plain = loss_and_grads()
    finally:
        steps.MIN_SHARED = saved
    assert len(calls) == 1 and steps._shared_prefix(model.model, collate([(examples[0],)], 0)) == 0
    assert shared[0] == pytest.approx(plain[0], rel=1e-5)
    for a, b in zip(shared[1], plain[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    packed = collate(make_rows(examples, 128, packing=True, seed=0), tok.pad_token_id)
    assert packed.lengths is None and steps._shared_prefix(model.model, packed) == 0
