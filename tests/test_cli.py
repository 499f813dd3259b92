"""The `slmops` command line on the tiny model: models list/import/show/alias/rm, generate,
chat, help texts, and the error edge (exit code 2, one clear line, no traceback) through the
real console script."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from slmops.cli import app
from slmops.engines.base import Message
from slmops.errors import DataError
from slmops.models.catalog import CATALOG

runner = CliRunner()

BUILTIN = {"smollm2-135m-instruct", "gemma-3-270m", "smollm2-360m-instruct"}


def cli(*args: str, input: str | None = None, ok: bool = True):
    result = runner.invoke(app, list(args), input=input)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def cli_json(*args: str):
    return json.loads(cli(*args, "--json").stdout)


def run_script(slmops_bin: Path, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLMOPS_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("SLMOPS_DEBUG", None)
    return subprocess.run([str(slmops_bin), *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, and the message on stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    stderr = assert_clean_error(proc, *needles)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture()
def imported(home: Path, tiny_model_dir: Path) -> dict:
    """The tiny model imported through the CLI as `tiny`."""
    return cli_json("models", "import", str(tiny_model_dir), "--name", "tiny")


# -- models ----------------------------------------------------------------------------------------
def test_models_list_json_on_an_empty_store(home: Path):
    data = cli_json("models", "list")
    names = [e["name"] for e in data["catalog"]]
    assert set(names) == set(CATALOG) and set(names) >= BUILTIN
    assert all(e["pulled"] is False for e in data["catalog"])
    assert data["store"] == []
    smol = next(e for e in data["catalog"] if e["name"] == "smollm2-135m-instruct")
    assert smol["source"].startswith("pypi:") and smol["chat_template"] == "chatml" and smol["parameters"] > 0


def test_models_list_shows_imported_models(imported: dict):
    data = cli_json("models", "list")
    assert [r["ref"] for r in data["store"]] == ["tiny:1"]
    table = cli("models", "list").stdout
    assert "tiny:1" in table and "smollm2-135m-instruct" in table


def test_models_import_then_show(imported: dict, tiny_model_dir: Path):
    assert imported["name"] == "tiny" and imported["version"] == 1 and imported["format"] == "hf"
    shown = cli_json("models", "show", "tiny")
    for key in ("name", "version", "format", "path", "size_bytes", "parameters", "parents", "recipe", "metrics",
                "aliases"):
        assert key in shown, key
    assert shown["path"] == imported["path"] and Path(shown["path"]).is_dir()
    assert shown["recipe"]["kind"] == "import" and shown["recipe"]["source_path"] == str(tiny_model_dir.resolve())
    assert shown["parameters"] > 0 and shown["size_bytes"] > 0
    text = cli("models", "show", "tiny:1").stdout
    assert "tiny:1" in text and "hf" in text


def test_models_alias_show_and_delete(imported: dict, tiny_model_dir: Path):
    cli("models", "import", str(tiny_model_dir), "--name", "tiny")
    out = cli("models", "alias", "tiny:1", "prod").stdout
    assert "tiny@prod" in out and "tiny:1" in out
    shown = cli_json("models", "show", "tiny@prod")
    assert shown["version"] == 1 and shown["aliases"] == ["prod"]
    moved = cli_json("models", "alias", "tiny:2", "prod")
    assert moved["version"] == 2 and moved["aliases"] == ["prod"]
    assert cli_json("models", "show", "tiny@prod")["version"] == 2
    cli("models", "alias", "tiny:2", "prod", "--delete")
    assert cli_json("models", "show", "tiny:2")["aliases"] == []


def test_models_rm_one_version(imported: dict, tiny_model_dir: Path):
    cli("models", "import", str(tiny_model_dir), "--name", "tiny")
    assert cli_json("models", "rm", "tiny:1")["removed"] == ["tiny:1"]
    assert not Path(imported["path"]).exists()
    assert [r["ref"] for r in cli_json("models", "list")["store"]] == ["tiny:2"]
    assert "removed tiny:2" in cli("models", "rm", "tiny").stdout
    assert cli_json("models", "list")["store"] == []


# -- generate / chat -------------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["path", "name"])
def test_generate_one_prompt_as_json(imported: dict, tiny_model_dir: Path, by: str):
    ref = str(tiny_model_dir) if by == "path" else "tiny"
    data = cli_json("generate", ref, "--prompt", "The capital of France is", "--max-tokens", "5")
    assert data["model"] == ref
    assert isinstance(data["text"], str)
    assert 1 <= data["completion_tokens"] <= 5 and data["prompt_tokens"] > 0
    assert data["finish_reason"] in ("stop", "length")
    if data["finish_reason"] == "length":
        assert data["completion_tokens"] == 5


def test_generate_streamed_text_matches_the_json_answer(imported: dict):
    args = ("generate", "tiny", "--prompt", "Hello world", "--max-tokens", "8")
    text = cli_json(*args)["text"]
    assert cli(*args).stdout == text + "\n"


def test_generate_a_prompts_file(imported: dict, tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"id": 1, "prompt": "Hello", "tag": "a"},
        {"id": 2, "messages": [{"role": "user", "content": "The capital of France is"}]},
        {"id": 3, "prompt": "héllo 世界"},
    ]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = cli_json("generate", "tiny", "--input", str(prompts), "--output", str(out), "--max-tokens", "4",
                       "--batch-size", "2")
    assert summary["records"] == 3 and summary["output"] == str(out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    for rec, row in zip(records, rows, strict=True):
        assert {k: row[k] for k in rec} == rec  # every original field, unchanged, in order
        assert isinstance(row["output"], str)
        assert row["finish_reason"] in ("stop", "length") and 1 <= row["completion_tokens"] <= 4
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in rows)


def test_generate_validates_the_prompts_file_before_loading_a_model(home: Path, tmp_path: Path, monkeypatch):
    """A broken prompts file must fail before any model is opened (or pulled)."""
    opened: list[str] = []

    def fake_open_engine(ref, *args, **kwargs):
        opened.append(ref)
        raise AssertionError("open_engine called before the prompts file was validated")

    monkeypatch.setattr("slmops.cli.generate.open_engine", fake_open_engine)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "broken",\n', encoding="utf-8")
    result = cli("generate", "smollm2-135m-instruct", "--input", str(prompts), "--output", str(tmp_path / "o.jsonl"),
                 ok=False)
    assert isinstance(result.exception, DataError), result.exception
    assert "line 2" in str(result.exception)
    assert opened == []
    assert not (tmp_path / "o.jsonl").exists()


@pytest.fixture()
def chat_spy(monkeypatch) -> list[tuple[tuple, str]]:
    """Record what `slmops chat` sends to the (real) engine and what came back."""
    from slmops.engines import open_engine as real_open_engine

    seen: list[tuple[tuple, str]] = []

    def spy_open_engine(ref, *args, **kwargs):
        engine = real_open_engine(ref, *args, **kwargs)
        real_stream = engine.stream

        def stream(request):
            chunks = list(real_stream(request))
            seen.append((request.messages, "".join(c.text for c in chunks)))
            yield from chunks

        engine.stream = stream
        return engine

    monkeypatch.setattr("slmops.cli.generate.open_engine", spy_open_engine)
    return seen


def test_chat_answers_keeps_history_resets_and_exits(imported: dict, chat_spy):
    result = cli("chat", "tiny", "--max-tokens", "5", "--temperature", "1", "--seed", "1", "--system", "Be brief.",
                 input="Hello\nHow are you?\n/reset\nHi\n/exit\nnever read\n")
    assert [msgs for msgs, _ in chat_spy] == [
        (Message("system", "Be brief."), Message("user", "Hello")),
        (Message("system", "Be brief."), Message("user", "Hello"), Message("assistant", chat_spy[0][1]),
         Message("user", "How are you?")),
        (Message("system", "Be brief."), Message("user", "Hi")),  # /reset keeps only the system prompt
    ]
    answers = [answer for _, answer in chat_spy]
    assert all(answers)
    # each answer is streamed to stdout after its prompt; /reset prints nothing there
    assert result.stdout == f"> {answers[0]}\n> {answers[1]}\n> > {answers[2]}\n> "
    assert "history cleared" in result.stderr


def test_chat_ends_at_end_of_input(imported: dict):
    result = cli("chat", "tiny", "--max-tokens", "3", "--temperature", "0", input="Hello\n")
    assert result.exit_code == 0 and result.stdout.startswith("> ")


# -- help ------------------------------------------------------------------------------------------------
def _leaf_commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name)


LEAVES = sorted(_leaf_commands(typer.main.get_command(app)))


def test_every_builtin_command_is_discovered():
    assert {("models", c) for c in ("list", "show", "pull", "import", "rm", "alias")} <= set(LEAVES)
    assert {("generate",), ("chat",), ("demo",)} <= set(LEAVES)


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_command_help_has_an_example(command: tuple[str, ...]):
    out = cli(*command, "--help").stdout
    assert "Example:" in out and "slmops " in out.split("Example:", 1)[1]


# -- errors through the real console script ----------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("generate", "smollm2-135m-instrct", "--prompt", "hi"),
        ("models", "show", "smollm2-135m-instrct"),
        ("models", "pull", "smollm2-135m-instrct"),
    ],
    ids=["generate", "show", "pull"],
)
def test_misspelt_model_name_suggests_the_right_one(slmops_bin: Path, home: Path, args):
    proc = run_script(slmops_bin, home, *args)
    line = assert_one_line_error(proc, "Did you mean 'smollm2-135m-instruct'")
    assert "smollm2-135m-instrct" in line
    assert not (home / "models" / "smollm2-135m-instruct").exists()  # nothing was pulled


def test_bad_jsonl_line_in_input_names_file_and_line(slmops_bin: Path, home: Path, tiny_model_dir: Path, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n\n{"prompt": "broken",}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run_script(slmops_bin, home, "generate", str(tiny_model_dir), "--input", str(prompts), "--output", str(out))
    assert_one_line_error(proc, f"{prompts}, line 3", "not valid JSON")
    assert not out.exists()


def test_store_errors_are_one_line(slmops_bin: Path, home: Path, tiny_model_dir: Path):
    assert_one_line_error(run_script(slmops_bin, home, "models", "show", "tiny:3"), "tiny")
    assert_one_line_error(run_script(slmops_bin, home, "models", "rm", "../x"), "not a path")
    assert_one_line_error(
        run_script(slmops_bin, home, "models", "import", str(tiny_model_dir), "--name", "../x"), "Invalid model name"
    )
    assert not (home / "x").exists() and not (home.parent / "x").exists()
    assert_one_line_error(
        run_script(slmops_bin, home, "generate", str(tiny_model_dir), "--input", "p.jsonl"), "--output"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "Usage"),
        (("models",), "Usage"),
        (("bogus",), "bogus"),
        (("models", "import", "somewhere"), "--name"),
        (("generate", "tiny", "--prompt", "hi", "--max-tokens", "0"), "max-tokens"),
        (("generate", "tiny", "--no-such-flag"), "no-such-flag"),
    ],
    ids=["no-args", "group-no-args", "unknown-command", "missing-option", "bad-value", "unknown-option"],
)
def test_usage_errors_are_clean(slmops_bin: Path, home: Path, args, needle: str):
    """Click usage errors (typer vendors click as typer._click) must not end in a traceback."""
    proc = run_script(slmops_bin, home, *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr + proc.stdout
    assert proc.returncode in ((0, 2) if not args or args == ("models",) else (2,))


def test_version_and_help_exit_zero(slmops_bin: Path, home: Path):
    from slmops import __version__

    proc = run_script(slmops_bin, home, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"slmops {__version__}"
    proc = run_script(slmops_bin, home, "models", "list", "--help")
    assert proc.returncode == 0 and "Example:" in proc.stdout
