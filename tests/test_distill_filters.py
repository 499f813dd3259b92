"""Each teacher-output filter on crafted outputs."""

from __future__ import annotations

import json
import re

import pytest

from slmops.data.formats import load_schema
from slmops.distill.filters import (
    Checks,
    Verdict,
    apply_vote,
    check_output,
    dedup_key,
    majority,
    repetition_loop,
)
from slmops.errors import SlmopsError

LABELS = ("billing", "technical", "account")
CLS = Checks("classification", LABELS)


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("", "stop", "empty"),
        ("   \n ", "stop", "empty"),
        ("billing and then the answer was cut", "length", "truncated"),
        ("I think so. " * 6, "stop", "repetition"),
        ("the refund the refund the refund the refund the refund the refund", "stop", "repetition"),
        ("!" * 60, "stop", "repetition"),
        ("It is about shipping.", "stop", "not_in_label_set"),
        ("Billing, technical, account.", "stop", "several_labels"),
    ],
)
def test_rejections_carry_their_reason(text: str, finish: str, reason: str) -> None:
    assert check_output(text, finish, CLS).reason == reason


def test_labels_are_normalised_to_the_label_set() -> None:
    assert check_output("Billing.", "stop", CLS) == Verdict("billing", "billing")
    assert check_output("Label: TECHNICAL - the app crashes", "stop", CLS).completion == "technical"


def test_natural_text_is_not_a_repetition_loop() -> None:
    text = ("The customer was charged twice for the same order. The customer wants a refund for the second "
            "charge, and the customer asks us to check the card on file. Very very good.")
    assert repetition_loop(text) is None
    assert repetition_loop("no no no no") is None
    assert repetition_loop("| a | b |\n|---|---|\n| 1 | 2 |") is None
    assert repetition_loop("one two three four " * 3) == "one two three four"


def test_math_reads_the_final_number_and_keeps_the_reasoning_only_with_cot() -> None:
    text = "3 boxes of 4 apples is 12. Then 12 + 30 = 42. The answer is 42."
    assert check_output(text, "stop", Checks("math")) == Verdict("42", "42")
    assert check_output(text, "stop", Checks("math", cot=True)) == Verdict(text, "42")
    assert check_output("#### 1,234.50", "stop", Checks("math")).answer == "1234.5"
    assert check_output("I cannot tell.", "stop", Checks("math")).reason == "no_number"


def test_regex_filter() -> None:
    checks = Checks("qa", regex=re.compile(r"^[A-Z][a-z]+$"))
    assert check_output("Paris", "stop", checks).ok
    bad = check_output("paris, france", "stop", checks)
    assert (bad.reason, bad.detail) == ("regex_mismatch", "paris, france")


def test_json_schema_filter(tmp_path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"type": "object", "required": ["name", "age"],
                                       "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}))
    checks = Checks("qa", json_schema=load_schema(schema_file))
    assert check_output('{"name": "Ada", "age": 36}', "stop", checks).ok
    assert check_output('```json\n{"name": "Ada", "age": 36}\n```', "stop", checks).ok
    wrong = check_output('{"name": "Ada", "age": "old"}', "stop", checks)
    assert wrong.reason == "json_schema" and wrong.detail.startswith("age:")
    missing = check_output('{"name": "Ada"}', "stop", checks)
    assert missing.reason == "json_schema" and "'age' is a required property" in missing.detail
    assert check_output("Ada, 36", "stop", checks).detail.startswith("not JSON")


def test_invalid_schema_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "no-such-type"}')
    with pytest.raises(SlmopsError, match="not a valid JSON Schema"):
        load_schema(bad)


def test_majority_needs_more_than_half_of_all_samples() -> None:
    assert majority(["a", "a", "b"], 3) == "a"
    assert majority(["a", "b", None], 3) is None
    assert majority(["a", "a", None, None], 4) is None  # half is not a majority
    assert majority(["a", "a", None], 3) == "a"


def test_vote_rejects_disagreeing_samples_and_inputs_without_agreement() -> None:
    ok = [Verdict(x, x) for x in ("billing", "billing", "technical")]
    voted = apply_vote(ok, [], 3)
    assert [v.reason for v in voted] == [None, None, "vote_disagreement"]
    split = apply_vote([Verdict(x, x) for x in ("billing", "technical", "account")], [], 3)
    assert {v.reason for v in split} == {"no_agreement"}
    # a resumed run: two samples recorded earlier said "account"; the new one disagrees
    assert apply_vote([Verdict("billing", "billing")], ["account", "account"], 3)[0].reason == "vote_disagreement"
    failed = Verdict("", None, "empty")
    assert apply_vote([failed, Verdict("a", "a")], [], 2)[0] is failed


def test_dedup_key_ignores_case_and_spacing_of_the_completion() -> None:
    assert dedup_key("Q?", "Paris  is") == dedup_key("Q?", "paris is")
    assert dedup_key("Q?", "Paris") != dedup_key("Other?", "Paris")
