"""Reading prompt records (JSONL/JSON/CSV) and turning them into generation requests, with
errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.data.prompts import read_prompt_file, record_to_request
from slmops.data.records import read_located, read_records, write_jsonl_atomic
from slmops.engines.base import GenerationParams, Message
from slmops.errors import DataError

PARAMS = GenerationParams(max_tokens=8)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- reading ---------------------------------------------------------------------------------------
def test_jsonl_records_with_their_line_numbers(tmp_path: Path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "id": 1}\n\n{"prompt": "b", "id": 2}\n')
    located = read_located(path)
    assert located == [(f"{path}, line 1", {"prompt": "a", "id": 1}), (f"{path}, line 3", {"prompt": "b", "id": 2})]
    assert read_records(path) == [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 2}]


def test_json_list_records(tmp_path: Path):
    path = write(tmp_path / "p.json", json.dumps([{"prompt": "a"}, {"prompt": "b", "x": [1, 2]}]))
    assert read_located(path) == [
        (f"{path}, record 1", {"prompt": "a"}),
        (f"{path}, record 2", {"prompt": "b", "x": [1, 2]}),
    ]


def test_csv_records(tmp_path: Path):
    path = write(tmp_path / "p.csv", 'prompt,label\n"Hello, world",greeting\nBye,farewell\n')
    assert read_records(path) == [
        {"prompt": "Hello, world", "label": "greeting"},
        {"prompt": "Bye", "label": "farewell"},
    ]
    assert read_located(path)[1][0] == f"{path}, line 3"  # CSV rows are named by the line they start on


def test_suffix_is_case_insensitive(tmp_path: Path):
    path = write(tmp_path / "P.JSONL", '{"prompt": "a"}\n')
    assert read_records(path) == [{"prompt": "a"}]


@pytest.mark.parametrize(
    ("suffix", "content"),
    [(".jsonl", '\ufeff{"prompt": "a"}\n'), (".csv", "\ufeffprompt,label\na,b\n")],
)
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, suffix: str, content: str):
    """Files saved by Excel or Windows editors start with a BOM; the first key must still be 'prompt'."""
    path = write(tmp_path / f"p{suffix}", content)
    assert read_records(path)[0]["prompt"] == "a"


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n\n{"prompt": "b",}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"line 3: not valid JSON") as info:
        read_located(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("line", "kind"), [('["a", "b"]', "list"), ('"just text"', "str"), ("42", "int")])
def test_non_object_jsonl_line_is_rejected(tmp_path: Path, line: str, kind: str):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"line 2: expected a JSON object, got {kind}") as info:
        read_located(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"), [("p.jsonl", '{"prompt": "a"}\n'), ("p.json", '[{"prompt": "a"}]'), ("p.csv", "prompt\na\n")]
)
def test_a_file_that_is_not_utf8_is_a_data_error(tmp_path: Path, name: str, content: str):
    """A UTF-16 file (PowerShell's `>`) must give a DataError naming the file, not a UnicodeDecodeError."""
    path = tmp_path / name
    path.write_bytes(content.encode("utf-16"))
    with pytest.raises(DataError) as info:
        read_located(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"), [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", "[]"), ("e.csv", "prompt\n")]
)
def test_empty_files_are_rejected(tmp_path: Path, name: str, content: str):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match="holds no records") as info:
        read_located(path)
    assert str(path) in str(info.value)


def test_bad_json_files_are_rejected(tmp_path: Path):
    path = write(tmp_path / "p.json", '[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataError, match=r"not valid JSON .*line 2"):
        read_located(path)
    path = write(tmp_path / "q.json", '{"prompt": "a"}')
    with pytest.raises(DataError, match="list of objects"):
        read_located(path)
    path = write(tmp_path / "r.json", '[{"prompt": "a"}, "b"]')
    with pytest.raises(DataError, match="list of objects"):
        read_located(path)


def test_unsupported_suffix_and_missing_file(tmp_path: Path):
    path = write(tmp_path / "p.txt", "hello\n")
    with pytest.raises(DataError, match=r"unsupported data format '\.txt'") as info:
        read_located(path)
    assert ".jsonl" in str(info.value) and ".csv" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        read_located(tmp_path / "missing.jsonl")


# -- records to requests -----------------------------------------------------------------------------
def test_prompt_records_become_chat_requests(tmp_path: Path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "Hi", "id": 7}\n{"messages": [{"role": "user", "content": "Yo"}]}\n')
    pairs = read_prompt_file(path, PARAMS, system="Be brief.")
    assert [rec for rec, _ in pairs] == [{"prompt": "Hi", "id": 7}, {"messages": [{"role": "user", "content": "Yo"}]}]
    first, second = (req for _, req in pairs)
    assert first.messages == (Message("system", "Be brief."), Message("user", "Hi")) and first.prompt is None
    assert second.messages == (Message("system", "Be brief."), Message("user", "Yo"))
    assert first.params is PARAMS


def test_raw_prompt_records_skip_the_template(tmp_path: Path):
    path = write(tmp_path / "p.csv", "prompt\nOnce upon a time\n")
    ((_, req),) = read_prompt_file(path, PARAMS, raw=True)
    assert req.prompt == "Once upon a time" and req.messages is None


def test_an_existing_system_message_is_kept():
    rec = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    req = record_to_request(rec, PARAMS, where="f, line 1", system="other")
    assert req.messages == (Message("system", "S"), Message("user", "U"))


@pytest.mark.parametrize(
    ("rec", "problem"),
    [
        ({"id": 1}, "missing 'prompt' field (keys: id)"),
        ({"text": "hi"}, "missing 'prompt' field (keys: text)"),
        ({"prompt": ""}, "'prompt' is empty"),
        ({"prompt": "   "}, "'prompt' is empty"),
        ({"prompt": 3}, "'prompt' must be a string, not int"),
        ({"prompt": ["a"]}, "'prompt' must be a string, not list"),
        ({"prompt": None}, "'prompt' must be a string, not null"),
    ],
)
def test_a_bad_prompt_field_names_the_line(tmp_path: Path, rec: dict, problem: str):
    path = write(tmp_path / "p.jsonl", '{"prompt": "fine"}\n' + json.dumps(rec) + "\n")
    with pytest.raises(DataError) as info:
        read_prompt_file(path, PARAMS)
    assert f"{path}, line 2: {problem}." in str(info.value)


def test_custom_input_field():
    req = record_to_request({"question": "Why?"}, PARAMS, where="x", input_field="question")
    assert req.messages == (Message("user", "Why?"),)
    with pytest.raises(DataError, match="'question'"):
        record_to_request({"prompt": "Why?"}, PARAMS, where="x", input_field="question")


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], r"messages\[1\]"),
        ([{"role": "user"}], r"messages\[0\]"),
        ([{"role": "user", "content": 5}], r"messages\[0\]"),
        (["hello"], r"messages\[0\]"),
    ],
)
def test_bad_messages_are_rejected_with_their_location(tmp_path: Path, messages, match: str):
    path = write(tmp_path / "p.jsonl", json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=match) as info:
        read_prompt_file(path, PARAMS)
    assert f"{path}, line 1" in str(info.value)


def test_every_record_is_validated_before_any_is_returned(tmp_path: Path):
    lines = ['{"prompt": "ok"}'] * 5 + ['{"nope": 1}']
    path = write(tmp_path / "p.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 6"):
        read_prompt_file(path, PARAMS)


# -- writing -------------------------------------------------------------------------------------------
def test_write_jsonl_atomic_round_trips_and_leaves_no_temp_file(tmp_path: Path):
    out = tmp_path / "sub" / "out.jsonl"
    recs = [{"prompt": "héllo", "output": "世界"}, {"n": 2}]
    assert write_jsonl_atomic(out, recs) == 2
    assert read_records(out) == recs
    assert "世界" in out.read_text(encoding="utf-8")  # not \\u-escaped
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_write_jsonl_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path):
    out = write(tmp_path / "out.jsonl", '{"old": true}\n')

    def records():
        yield {"new": 1}
        raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(out, records())
    assert out.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
