"""Structured teacher answers: with --json-schema a local teacher decodes under the schema (every
answer valid by construction, the filter still checks), a remote one is sent response_format;
``slmops generate --json-schema`` does the same for a prompts file."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from slmops.distill import make_generate_config, run_generate
from slmops.engines.base import GenerationParams
from slmops.engines.grammar import GrammarError, with_json_schema
from slmops.engines.remote import _sampling_fields

SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "London", "New York"]}, "confidence": {"type": "integer",
                   "minimum": 0, "maximum": 9}},  # fmt: skip
    "required": ["city", "confidence"],
}
ROWS = [{"prompt": "Where is the Louvre?"}, {"prompt": "Where is Big Ben?"}, {"prompt": "Where is the Met?"}]


def test_a_local_teacher_answers_valid_json_by_construction(tmp_path: Path, tiny_engine) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "synthetic.jsonl"
    config = make_generate_config(teacher="tiny", data=str(data), output=out, task="qa", json_schema=schema,
                                  max_tokens=64, temperature=1.0, n=2)  # fmt: skip
    result = run_generate(config, engine=tiny_engine)  # a random model: only the grammar makes these valid
    assert result.counts == {"accepted": 6}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        answer = next(v for k, v in row.items() if k in ("answer", "output", "completion", "response"))
        jsonschema.validate(json.loads(answer), SCHEMA)


def test_remote_teachers_are_sent_response_format() -> None:
    params = with_json_schema(GenerationParams(max_tokens=8), SCHEMA)
    fields = _sampling_fields(params)
    expected = {"name": "answer", "schema": SCHEMA, "strict": True}
    assert fields["response_format"] == {"type": "json_schema", "json_schema": expected}
    assert params.grammar is not None and "response_format" not in _sampling_fields(GenerationParams())


def test_generate_cli_with_a_json_schema(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from slmops.cli import app

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    r = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "-p", "Hello", "--json-schema", str(schema),
                                 "--json", "--max-tokens", "64", "--threads", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    jsonschema.validate(json.loads(json.loads(r.stdout[r.stdout.index("{"):])["text"]), SCHEMA)
    schema.write_text(json.dumps({"type": "object", "if": {}}))
    bad = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "-p", "Hello", "--json-schema", str(schema)])
    assert isinstance(bad.exception, GrammarError) and "if" in str(bad.exception)  # main() makes it exit 2
