"""Stage 1 with a scripted teacher: prompts per task, few-shot examples, recipe files, filters
with counts and a rejected side file, voting, duplicates, and the run rules."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from slmops.distill import make_generate_config, run_generate
from slmops.distill.recipes import DEFAULT_RECIPES
from slmops.engines.base import Engine, GenerationRequest, GenerationResult
from slmops.errors import DataError, SlmopsError
from slmops.evaluate.tasks import LABEL_INSTRUCTION

LABELS = "billing,technical,account"
TICKETS = [
    {"prompt": "I was charged twice this month.", "answer": "billing"},
    {"prompt": "The app crashes when I log in.", "answer": "technical"},
    {"prompt": "Please change my email address.", "answer": "account"},
    {"prompt": "My invoice shows the wrong amount.", "answer": "billing"},
]


class ScriptedTeacher(Engine):
    """Answers with ``reply(question, k)``: the question is the last user turn's first line (after
    the label instruction when a recipe puts it first),
    ``k`` counts how often that question was asked before (or, ``by_seed``, is the request's
    seed, so a sample gets the same answer in any run). Records every batch it got."""

    def __init__(self, reply: Callable[[str, int], str | tuple[str, str]], by_seed: bool = False) -> None:
        self.reply = reply
        self.by_seed = by_seed
        self.asked: Counter[str] = Counter()
        self.batches: list[list[GenerationRequest]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append(list(requests))
        out = []
        for r in requests:
            turn = [m.content for m in r.messages or () if m.role == "user"][-1]
            if turn.startswith(LABEL_INSTRUCTION.split("{")[0]):
                turn = turn.split("\n\n", 1)[1]
            question = turn.split("\n")[0]
            answer = self.reply(question, r.params.seed or 0 if self.by_seed else self.asked[question])
            self.asked[question] += 1
            text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
            out.append(GenerationResult(text, 10, len(text.split()), finish))  # type: ignore[arg-type]
        return out

    def stream(self, request: GenerationRequest):  # pragma: no cover - not used by distill
        raise NotImplementedError

    def count_tokens(self, request: GenerationRequest) -> int:
        return 1


def gold_teacher(rows: Sequence[dict[str, Any]]) -> ScriptedTeacher:
    gold = {r["prompt"]: r["answer"] for r in rows}
    return ScriptedTeacher(lambda q, k: gold.get(q, "no idea"))


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def generate(tmp_path: Path, rows: Sequence[dict[str, Any]], teacher: Engine, **options: Any):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_rows(tmp_path / "prompts.jsonl", rows)
    config = make_generate_config(teacher="scripted", data=str(data), output=tmp_path / "synthetic.jsonl", **options)
    return run_generate(config, engine=teacher)


def test_classification_prompts_few_shot_and_student_prompt(tmp_path: Path) -> None:
    replies = {TICKETS[0]["prompt"]: "Billing.", TICKETS[1]["prompt"]: "technical"}
    teacher = ScriptedTeacher(lambda q, k: replies.get(q, "shipping"))
    result = generate(tmp_path, TICKETS, teacher, task="classification", labels=LABELS, few_shot=2)

    first = teacher.batches[0][0].messages
    instruction = LABEL_INSTRUCTION.format(labels="billing, technical, account")
    assert first[0].role == "system" and first[0].content == DEFAULT_RECIPES["classification"].system
    # two few-shot turns with gold answers (one per label first), then the question
    assert [(m.role, m.content) for m in first[1:5]] == [
        ("user", f"{TICKETS[0]['prompt']}\n\n{instruction}"), ("assistant", "billing"),
        ("user", f"{TICKETS[1]['prompt']}\n\n{instruction}"), ("assistant", "technical"),
    ]
    assert first[-1].content == f"{TICKETS[0]['prompt']}\n\n{instruction}"

    accepted = lines(result.output)
    assert [(r["index"], r["completion"], r["output"]) for r in accepted] == [(0, "billing", "Billing."),
                                                                              (1, "technical", "technical")]
    # the student is asked exactly as `slmops eval` asks: the input plus the task's instruction
    assert accepted[0]["prompt"] == f"{TICKETS[0]['prompt']}\n\n{instruction}"
    assert accepted[0]["teacher"] == "scripted" and accepted[0]["gold"] == "billing"
    rejected = lines(result.rejected_file)
    assert [(r["index"], r["reason"], r["detail"]) for r in rejected] == [(2, "not_in_label_set", "shipping"),
                                                                          (3, "not_in_label_set", "shipping")]
    assert result.counts == {"accepted": 2, "not_in_label_set": 2}
    assert result.rejected_file.name == "synthetic.rejected.jsonl"
    assert json.loads(result.recipe_file.read_text())["recipe"] == result.recipe


def test_labels_are_inferred_from_gold_answers_and_nli_has_its_own(tmp_path: Path) -> None:
    result = generate(tmp_path, TICKETS, gold_teacher(TICKETS), task="classification")
    assert result.counts == {"accepted": 4}
    nli = [{"premise": "A man is sleeping.", "hypothesis": "Nobody sleeps."}]
    teacher = ScriptedTeacher(lambda q, k: "Contradiction")
    out = generate(tmp_path / "nli", nli, teacher, task="nli")
    assert lines(out.output)[0]["completion"] == "contradiction"
    assert lines(out.output)[0]["prompt"].startswith("Premise: A man is sleeping.\nHypothesis: Nobody sleeps.")


def test_math_with_chain_of_thought(tmp_path: Path) -> None:
    rows = [{"prompt": "What is 6 times 7?"}, {"prompt": "What is 2 plus 2?"}]
    replies = {"What is 6 times 7?": "6 x 7 = 42. The answer is 42.", "What is 2 plus 2?": "I do not know."}
    teacher = ScriptedTeacher(lambda q, k: replies[q])
    result = generate(tmp_path, rows, teacher, task="math", cot=True)
    assert DEFAULT_RECIPES["math"].cot_format in teacher.batches[0][0].messages[-1].content
    assert teacher.batches[0][0].params.max_tokens == 256
    [row] = lines(result.output)
    assert (row["completion"], row["answer"]) == ("6 x 7 = 42. The answer is 42.", "42")
    assert result.counts == {"accepted": 1, "no_number": 1}


def test_vote_and_duplicates(tmp_path: Path) -> None:
    script = {TICKETS[0]["prompt"]: ["billing", "Billing", "technical"],
              TICKETS[1]["prompt"]: ["technical", "billing", "account"]}
    teacher = ScriptedTeacher(lambda q, k: script[q][k])
    result = generate(tmp_path, TICKETS[:2], teacher, task="classification", labels=LABELS, n=3, temperature=0.7,
                      vote=True)
    assert len(teacher.batches) == 1 and len(teacher.batches[0]) == 6  # all samples of an input in one batch
    assert len({r.params.seed for r in teacher.batches[0]}) == 6  # each sample its own seed
    assert [r["completion"] for r in lines(result.output)] == ["billing"]
    reasons = [(r["index"], r["sample"], r["reason"]) for r in lines(result.rejected_file)]
    assert reasons == [(0, 1, "duplicate"), (0, 2, "vote_disagreement"), (1, 0, "no_agreement"),
                       (1, 1, "no_agreement"), (1, 2, "no_agreement")]


def test_duplicate_inputs_are_answered_once_and_duplicate_answers_rejected(tmp_path: Path) -> None:
    rows = [TICKETS[0], TICKETS[0], {**TICKETS[0], "id": 7}]  # the same record twice, then with another field
    teacher = gold_teacher(rows)
    result = generate(tmp_path, rows, teacher, task="classification", labels=LABELS)
    assert result.duplicate_inputs == 1 and result.samples == 2
    assert sum(len(b) for b in teacher.batches) == 2
    assert result.counts == {"accepted": 1, "duplicate": 1}


def test_empty_truncated_and_repetitive_outputs(tmp_path: Path) -> None:
    rows = [{"prompt": f"Question {i}?"} for i in range(4)]
    replies = ["", ("A long answer that", "length"), "yes and no " * 8, "A fine answer."]
    teacher = ScriptedTeacher(lambda q, k: replies[int(q.split()[1][0])])
    result = generate(tmp_path, rows, teacher, task="qa", batch_size=2)
    assert result.counts == {"accepted": 1, "empty": 1, "repetition": 1, "truncated": 1}
    assert [len(b) for b in teacher.batches] == [2, 2]


def test_regex_and_json_schema_filters(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["city"]}))
    rows = [{"prompt": "Where is the Louvre?"}, {"prompt": "Where is Big Ben?"}, {"prompt": "Where is the Met?"}]
    replies = {"Where is the Louvre?": '{"city": "Paris"}', "Where is Big Ben?": '{"town": "London"}',
               "Where is the Met?": "New York"}
    result = generate(tmp_path, rows, ScriptedTeacher(lambda q, k: replies[q]), task="qa", json_schema=schema,
                      regex=r"^\{")
    assert result.counts == {"accepted": 1, "json_schema": 1, "regex_mismatch": 1}


def test_recipe_file_overrides_the_prompt(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("system: Route tickets.\ntemplate: 'Ticket ({lang}): {input}'\n"
                      "examples:\n  - {input: Refund please, answer: billing}\n", encoding="utf-8")
    rows = [{**TICKETS[0], "lang": "en"}]
    teacher = ScriptedTeacher(lambda q, k: "billing")
    generate(tmp_path, rows, teacher, task="classification", labels=LABELS, recipe=recipe, system="Be terse.")
    msgs = [(m.role, m.content.split("\n")[0]) for m in teacher.batches[0][0].messages]
    assert msgs == [("system", "Be terse."), ("user", "Ticket (): Refund please"), ("assistant", "billing"),
                    ("user", f"Ticket (en): {TICKETS[0]['prompt']}")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("sytem: typo\n", encoding="utf-8")
    with pytest.raises(SlmopsError, match="Invalid recipe file .*sytem"):
        generate(tmp_path / "x", rows, teacher, task="classification", labels=LABELS, recipe=bad)


def test_format_first_puts_the_shared_instruction_before_the_text_when_asked(tmp_path: Path) -> None:
    instruction = LABEL_INSTRUCTION.format(labels="billing, technical, account")
    chat = {"messages": [{"role": "user", "content": "Refund please"}]}
    first = tmp_path / "first.yaml"
    first.write_text("format_first: true\n", encoding="utf-8")
    teacher = ScriptedTeacher(lambda q, k: "billing")
    generate(tmp_path / "a", [TICKETS[0], chat], teacher, task="classification", labels=LABELS, recipe=first)
    assert [r.messages[-1].content for r in teacher.batches[0]] == [f"{instruction}\n\n{TICKETS[0]['prompt']}",
                                                                    f"{instruction}\n\nRefund please"]
    # two prompts share everything up to the ticket text
    assert teacher.batches[0][0].messages[0] == teacher.batches[0][1].messages[0]
    teacher = ScriptedTeacher(lambda q, k: "billing")  # the default: the instruction after the text
    generate(tmp_path / "b", [TICKETS[0], chat], teacher, task="classification", labels=LABELS)
    assert [r.messages[-1].content for r in teacher.batches[0]] == [f"{TICKETS[0]['prompt']}\n\n{instruction}",
                                                                    f"Refund please\n\n{instruction}"]


def test_conversation_records_keep_their_messages(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Tell me a joke."}]}]
    result = generate(tmp_path, rows, ScriptedTeacher(lambda q, k: "Why did the chicken cross the road?"),
                      task="conversation")
    [row] = lines(result.output)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert row["messages"][-1]["content"] == "Why did the chicken cross the road?"


def test_settings_are_validated_together_and_data_problems_listed(tmp_path: Path) -> None:
    with pytest.raises(SlmopsError, match="--n > 1 needs --temperature > 0.*--cot is for --task math"):
        make_generate_config(teacher="t", data="d.jsonl", task="qa", output=tmp_path / "o.jsonl", n=3, cot=True)
    with pytest.raises(SlmopsError, match="--vote needs --n 2"):
        make_generate_config(teacher="t", data="d.jsonl", task="qa", output=tmp_path / "o.jsonl", vote=True)
    rows = [{"prompt": "ok"}, {"text": "no prompt"}, {"prompt": ""}]
    with pytest.raises(DataError, match=r"(?s)2 problem\(s\).*line 2.*line 3"):
        generate(tmp_path, rows, gold_teacher([]), task="qa")
    assert not (tmp_path / "synthetic.jsonl").exists()


def test_existing_output_needs_resume_and_resume_needs_the_same_settings(tmp_path: Path) -> None:
    generate(tmp_path, TICKETS, gold_teacher(TICKETS), task="classification", labels=LABELS)
    with pytest.raises(SlmopsError, match="already holds synthetic records.*--resume"):
        generate(tmp_path, TICKETS, gold_teacher(TICKETS), task="classification", labels=LABELS)
    with pytest.raises(SlmopsError, match="differ from the interrupted run: max_tokens, temperature"):
        generate(tmp_path, TICKETS, gold_teacher(TICKETS), task="classification", labels=LABELS, resume=True,
                 temperature=0.5, max_tokens=3)
    again = gold_teacher(TICKETS)
    result = generate(tmp_path, TICKETS, again, task="classification", labels=LABELS, resume=True)
    assert (result.resumed, result.generated, again.batches) == (4, 0, [])
