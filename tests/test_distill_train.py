"""Stage 2: accepted synthetic records become training data for the fine-tuning recipe, and the
registered student carries its lineage (teacher, synthetic file hash)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.cli.distill import app
from slmops.distill import make_generate_config, run_generate
from slmops.distill.train import default_output, synthetic_examples, training_record
from slmops.errors import DataError
from slmops.models.artifacts import import_model
from tests.test_distill_generate import TICKETS, gold_teacher, write_rows


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    data = write_rows(tmp_path / "tickets.jsonl", [*TICKETS, {"prompt": "Where is my parcel?"}])  # rejected
    config = make_generate_config(teacher="big-teacher:3", data=str(data), task="classification",
                                  labels="billing,technical,account", output=tmp_path / "synthetic.jsonl")
    return run_generate(config, engine=gold_teacher(TICKETS)).output


def test_records_convert_to_prompt_completion_or_messages() -> None:
    assert training_record({"key": "k", "prompt": "Q", "completion": "A", "output": "A!"}, "f, line 1") == {
        "prompt": "Q", "completion": "A"}
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert training_record({"key": "k", "messages": chat}, "f, line 1") == {"messages": chat}
    with pytest.raises(DataError, match="f, line 2: a rejected record"):
        training_record({"key": "k", "prompt": "Q", "completion": "A", "reason": "duplicate"}, "f, line 2")
    with pytest.raises(DataError, match="no 'prompt'\\+'completion'"):
        training_record({"key": "k", "text": "Q"}, "f, line 3")


def test_lineage_names_the_teacher_and_hashes_the_file(synthetic: Path) -> None:
    with synthetic.open("ab") as fh:
        fh.write(b'{"key": "torn')  # a generate run still writing (or killed): its torn tail is skipped
    records, lineage = synthetic_examples([synthetic])
    assert len(records) == 4 and records[0]["completion"] == "billing"
    assert lineage["teacher"] == "big-teacher:3" and lineage["task"] == "classification"
    assert lineage["synthetic"] == {str(synthetic.resolve()): hashlib.sha256(synthetic.read_bytes()).hexdigest()}
    with pytest.raises(DataError, match="does not exist"):
        synthetic_examples([synthetic.with_name("missing.jsonl")])


def test_default_output_name() -> None:
    assert default_output("smollm2-135m-instruct") == "smollm2-135m-instruct-distilled"
    assert default_output("./models/My Student") == "my-student-distilled"


def test_distill_train_registers_a_student_with_lineage(store, tiny_model_dir: Path, synthetic: Path) -> None:
    import_model(store, tiny_model_dir, "tiny")
    import_model(store, tiny_model_dir, "tiny-teacher")  # same tokenizer: logit KD is possible
    result = CliRunner().invoke(app, ["train", "--student", "tiny", "--synthetic", str(synthetic), "--max-steps", "2",
                                      "--batch-size", "2", "--max-seq-len", "256", "--lr", "0.001", "--teacher",
                                      "tiny-teacher", "--kd-loss", "jsd", "--kd-weight", "0.5", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rec = store.get(out["record"]["ref"])
    assert (rec.name, rec.format, rec.parents) == ("tiny-distilled", "peft-adapter", ["tiny:1"])
    lineage = rec.recipe["distill"]
    assert "distill" not in rec.metrics
    assert lineage["teacher"] == "big-teacher:3" and lineage["records"] == 4
    assert lineage["synthetic"][str(synthetic.resolve())] == hashlib.sha256(synthetic.read_bytes()).hexdigest()
    assert lineage["filters"] == {"accepted": 4, "rejected: not_in_label_set": 1}
    assert lineage["kd_teacher"] == "tiny-teacher"
    assert rec.recipe["kd"] == {"teacher": "tiny-teacher:1", "loss": "jsd", "temperature": 1.0, "weight": 0.5,
                                "top_k": None}  # fmt: skip
    train_file = Path(out["train_file"])
    assert rec.recipe["data"] == {str(train_file): lineage["train_sha256"]}
    assert json.loads(train_file.read_text().splitlines()[0]).keys() == {"prompt", "completion"}
    assert json.loads((train_file.parent / "distill.json").read_text()) == lineage
    assert out["steps"] == 2 and out["train_examples"] == 4
