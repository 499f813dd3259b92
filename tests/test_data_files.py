"""Data files as a new user makes them, through `finetune` and `distill generate`: each problem
is one DataError naming the file and the line (exit 2, one line, no traceback), never a
dropped or merged field; a legal Parquet file is read."""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmops.cli import app
from slmops.errors import DataError

GOOD = '{"prompt": "What is two plus two?", "completion": "Four."}\n'


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the error must hold besides the file name)."""
    (tmp / "folder.jsonl").mkdir()
    files = {
        "directory": (tmp / "folder.jsonl", "is a directory"),
        "surrogate": (tmp / "s.jsonl", "line 2: field 'prompt' holds a lone surrogate '\\ud800'"),
        "csv-extra-field": (tmp / "x.csv", "line 3: 3 fields, more than the header's 2"),
        "csv-missing-field": (tmp / "m.csv", "line 3: 1 field, fewer than the header's 2"),
        "csv-duplicate-column": (tmp / "d.csv", "line 1: the header names column 'prompt' more than once"),
        "latin-1": (tmp / "l.jsonl", "line 2: not UTF-8 text (byte"),
        "utf-16": (tmp / "u.jsonl", "line 1: the file is UTF-16 text"),
        "utf-16-no-bom": (tmp / "n.csv", "line 1: holds NUL bytes"),
    }
    files["surrogate"][0].write_text(GOOD + '{"prompt": "Hi \\ud800", "completion": "x"}\n')
    files["csv-extra-field"][0].write_text("prompt,completion\nHi,Hello\nHi, there,Hello\n")
    files["csv-missing-field"][0].write_text("prompt,completion\nHi,Hello\nHi\n")
    files["csv-duplicate-column"][0].write_text("prompt,prompt,completion\na,b,c\n")
    files["latin-1"][0].write_bytes(GOOD.encode() + '{"prompt": "Café?", "completion": "Oui."}\n'.encode("latin-1"))
    files["utf-16"][0].write_bytes(GOOD.encode("utf-16"))
    files["utf-16-no-bom"][0].write_bytes("prompt,completion\nHi,Hello\n".encode("utf-16-le"))
    return files


CASES = ["directory", "surrogate", "csv-extra-field", "csv-missing-field", "csv-duplicate-column", "latin-1", "utf-16",
         "utf-16-no-bom"]


@pytest.fixture()
def tiny(home, tiny_model_dir):
    from slmops.models.artifacts import import_model
    from slmops.models.store import ModelStore

    import_model(ModelStore(home), tiny_model_dir, "tiny")
    return "tiny"


def _finetune(data: Path, tmp: Path):
    return CliRunner().invoke(app, ["finetune", "--model", "tiny", "--data", str(data), "--output", "ft",
                                    "--max-steps", "1", "--method", "lora"])


def _distill(data: Path, tmp: Path):
    return CliRunner().invoke(app, ["distill", "generate", "--teacher", "tiny", "--data", str(data), "--task", "qa",
                                    "--output", str(tmp / "out.jsonl"), "--max-tokens", "2"])


@pytest.mark.parametrize("command", [_finetune, _distill], ids=["finetune", "distill-generate"])
@pytest.mark.parametrize("case", CASES)
def test_each_data_problem_is_one_error_naming_file_and_line(tmp_path, tiny, command, case):
    path, needle = _bad_files(tmp_path)[case]
    result = command(path, tmp_path)
    assert isinstance(result.exception, DataError), (result.output, result.exception)
    assert str(path) in str(result.exception) and needle in str(result.exception), str(result.exception)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("case", ["surrogate", "csv-extra-field", "utf-16"])
def test_the_console_script_prints_one_line_and_exits_2(tmp_path, home, tiny, slmops_bin, case):
    """Through the real entry point: one `error:` line (with the escape shown, not the raw
    surrogate, which stderr could not encode), exit code 2, no traceback."""
    from tests.test_cli import assert_one_line_error, run_script

    path, needle = _bad_files(tmp_path)[case]
    line = assert_one_line_error(run_script(slmops_bin, home, "distill", "generate", "--teacher", "tiny", "--data",
                                            str(path), "--task", "qa", "--output", str(tmp_path / "o.jsonl")), needle)
    assert str(path) in line


def test_a_pair_with_a_numeric_prompt_gets_the_same_message_from_both_commands(tmp_path, tiny):
    data = tmp_path / "p.jsonl"
    data.write_text(GOOD + '{"prompt": 7, "completion": "x"}\n')
    for command in (_finetune, _distill):
        result = command(data, tmp_path)
        assert isinstance(result.exception, DataError)
        assert f"{data}, line 2: 'prompt' must be a string, not int" in str(result.exception)


def test_a_csv_with_quoted_commas_and_multiline_fields_keeps_every_field(tmp_path):
    from slmops.data.records import read_located

    path = tmp_path / "q.csv"
    path.write_text('prompt,completion\n"Hi, there","Line one\nline two"\nBye,Later\n')
    assert read_located(path) == [
        (f"{path}, line 2", {"prompt": "Hi, there", "completion": "Line one\nline two"}),
        (f"{path}, line 4", {"prompt": "Bye", "completion": "Later"}),
    ]


def test_a_surrogate_pair_escape_is_text(tmp_path):
    from slmops.data.records import read_records

    path = tmp_path / "e.jsonl"
    path.write_text('{"prompt": "smile \\ud83d\\ude00"}\n')
    assert read_records(path) == [{"prompt": "smile \U0001f600"}]


def test_a_legal_parquet_file_trains(tmp_path, tiny):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed")
    import pyarrow as pa

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": ["Hi", "Bye"], "completion": ["Hello", "Later"]}), path)
    result = CliRunner().invoke(app, ["finetune", "--model", "tiny", "--data", str(path), "--output", "ft",
                                      "--max-steps", "1", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["record"]["recipe"]["data_shapes"] == {"prompt-completion": 2}


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    from slmops.data.records import read_located

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"pip install 'slmops\[parquet\]'") as info:
        read_located(path)
    assert str(path) in str(info.value)


def test_a_corrupt_parquet_file_is_a_data_error(tmp_path):
    pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed")
    from slmops.data.records import read_located

    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_located(path)


def test_utf32_is_named_too(tmp_path):
    from slmops.data.records import read_located

    path = tmp_path / "u.jsonl"
    path.write_bytes(codecs.BOM_UTF32_LE + GOOD.encode("utf-32-le"))
    with pytest.raises(DataError, match="line 1: the file is UTF-32 text"):
        read_located(path)
