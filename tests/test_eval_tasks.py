"""Task types: prompts, gold answers, label sets and metric lists."""

from __future__ import annotations

import pytest

from slmops.engines.base import GenerationParams
from slmops.errors import SlmopsError
from slmops.evaluate.tasks import TASKS, build_item, get_task, parse_labels, resolve_metrics

P = GenerationParams(max_tokens=8)


def item(rec, task="classification", labels=("billing", "other"), **kw):
    return build_item(0, "t.jsonl, line 1", rec, get_task(task), P, labels=labels, **kw)


def test_classification_prompt_lists_the_labels_and_normalises_the_gold():
    it = item({"prompt": "Ticket: refund me", "answer": " Billing "})
    assert it.scorable and it.gold == "billing" and it.question == "Ticket: refund me"
    user = it.request.messages[-1].content
    assert user.startswith("Ticket: refund me\n\n") and "billing, other" in user


def test_chat_records_get_the_instruction_on_the_last_user_turn():
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Refund?"},
                        {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Card charged twice"}],
           "answer": "billing"}
    msgs = item(rec).request.messages
    assert msgs[0].content == "Be brief." and msgs[1].content == "Refund?"
    assert msgs[3].content.startswith("Card charged twice\n\nAnswer with exactly one of")


def test_custom_fields_raw_prompts_and_system():
    it = item({"text": "hello", "label": "other"}, target_field="label", input_field="text", raw=True)
    assert it.scorable and it.request.prompt.startswith("hello\n\n") and it.gold == "other"
    sys_item = item({"prompt": "hi", "answer": "other"}, system="You route tickets.")
    assert sys_item.request.messages[0].content == "You route tickets."


def test_nli_builds_a_prompt_from_premise_and_hypothesis():
    it = item({"premise": "A man sleeps.", "hypothesis": "A person rests.", "answer": "ENTAILMENT"}, task="nli",
              labels=TASKS["nli"].default_labels)
    assert it.gold == "entailment" and "Premise: A man sleeps.\nHypothesis: A person rests." in it.question


@pytest.mark.parametrize(
    ("rec", "task", "issue"),
    [
        ({"prompt": "x"}, "classification", "missing_gold"),
        ({"prompt": "x", "answer": ""}, "qa", "missing_gold"),
        ({"prompt": "x", "answer": "sales"}, "classification", "gold_not_in_labels"),
        ({"prompt": "x", "answer": "many"}, "math", "gold_not_a_number"),
        ({"answer": "billing"}, "classification", "invalid_input"),
        ({"messages": "nope", "answer": "billing"}, "classification", "invalid_input"),
    ],
)
def test_unscorable_records_carry_an_issue(rec, task, issue):
    labels = ("billing", "other") if task == "classification" else ()
    it = item(rec, task=task, labels=labels)
    assert not it.scorable and it.issue == issue and it.where == "t.jsonl, line 1"


def test_qa_keeps_a_list_of_gold_answers_and_math_accepts_worked_solutions():
    assert item({"prompt": "Capital?", "answer": ["Paris", "paris, france"]}, task="qa", labels=()).gold == [
        "Paris", "paris, france"]
    math = item({"prompt": "2+2?", "answer": "2 + 2 = 4\n#### 4"}, task="math", labels=())
    assert math.scorable and "The answer is N" in math.request.messages[-1].content


def test_metric_lists():
    qa, gen, cls = get_task("qa"), get_task("generation"), get_task("classification")
    assert resolve_metrics(qa, None, ()) == ("token_f1", "exact_match")
    assert resolve_metrics(qa, ["rouge_l", "exact_match"], ()) == ("token_f1", "exact_match", "rouge_l")
    assert resolve_metrics(gen, None, ()) == ("rouge_l", "bleu")
    assert resolve_metrics(gen, ["exact_match", "bleu"], ()) == ("exact_match", "bleu")
    assert resolve_metrics(cls, None, ("a", "b")) == ("accuracy", "macro_f1")
    with pytest.raises(SlmopsError, match="Unknown metric"):
        resolve_metrics(gen, ["rouge"], ())
    with pytest.raises(SlmopsError, match="label set"):
        resolve_metrics(gen, ["accuracy"], ())


def test_labels_must_be_distinct():
    assert parse_labels(" a, b ,,c ") == ("a", "b", "c")
    assert parse_labels(["x", "x", "y"]) == ("x", "y")
    with pytest.raises(SlmopsError, match="not distinct"):
        parse_labels("not_duplicate,Not-Duplicate")
