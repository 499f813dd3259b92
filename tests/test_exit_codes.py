"""Exit codes and machine-readable errors: 2 for usage and input errors, 1 for a check that
ran and failed (gate, ``optimize --strict``, ``validate``); ``--json`` adds one JSON object."""

from __future__ import annotations

import json
import sys

import pytest
import typer

import slmops.cli as cli
from slmops.errors import CheckFailed, DataError, SlmopsError, error_json
from slmops.optimize import QualityGateError
from slmops.pipeline import GateFailed


def _fake_app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def boom(as_json: bool = typer.Option(False, "--json")) -> None:
        raise exc

    return app


def _main(monkeypatch, capsys, exc: BaseException | typer.Typer, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "app", exc if isinstance(exc, typer.Typer) else _fake_app(exc))
    monkeypatch.setattr(sys, "argv", ["slmops", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_checks_exit_1_and_input_errors_exit_2():
    assert SlmopsError("x").exit_code == 2 and DataError("x").exit_code == 2
    assert CheckFailed("x").exit_code == 1
    assert GateFailed("gate", ["accuracy >= 0.9"], {}).exit_code == 1
    assert issubclass(QualityGateError, CheckFailed)


def test_main_maps_error_to_one_line_and_its_exit_code(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, DataError("bad.jsonl line 3: not JSON.", "Fix the line."))
    assert code == 2 and out == ""
    assert "error: bad.jsonl line 3: not JSON. Fix the line." in err and "Traceback" not in err
    code, out, err = _main(monkeypatch, capsys, GateFailed("gate", ["accuracy >= 0.9"], {}))
    assert code == 1 and "Gate 'gate' failed" in err


def test_json_error_is_one_object_on_stdout(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, GateFailed("gate", ["accuracy >= 0.9"], {}), "--json")
    body = json.loads(out)
    assert code == 1 and set(body) == {"error"}
    assert body["error"]["type"] == "GateFailed" and body["error"]["exit_code"] == 1
    assert body["error"]["message"].startswith("Gate 'gate' failed") and "cache" in body["error"]["hint"]
    assert "error:" in err  # the human line stays on stderr
    assert error_json(SlmopsError("m")) == {"error": {"message": "m", "hint": None, "exit_code": 2,
                                                      "type": "SlmopsError"}}


def test_usage_error_exits_2_and_is_json_too(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, SlmopsError("unused"), "--no-such-flag")
    assert code == 2 and "No such option" in err and out == ""
    code, out, err = _main(monkeypatch, capsys, SlmopsError("unused"), "--json", "--no-such-flag")
    body = json.loads(out)["error"]
    assert code == 2 and body["type"] == "UsageError" and "--no-such-flag" in body["message"]


def test_success_help_and_typer_exit_codes(monkeypatch, capsys):
    from slmops.cli import app as real_app

    assert _main(monkeypatch, capsys, real_app, "--version")[0] == 0
    code, out, _ = _main(monkeypatch, capsys, real_app, "run", "--help")
    assert code == 0 and "--dry-run" in out
    code, out, _ = _main(monkeypatch, capsys, real_app, "run", "--schema")
    assert code == 0 and json.loads(out)["title"] == "slmops pipeline"


def test_a_failing_gate_exits_1_and_a_bad_file_exits_2(monkeypatch, capsys, tmp_path):
    from slmops.cli import app as real_app

    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    spec = tmp_path / "gate.yaml"
    spec.write_text("name: g\nsteps:\n  gate:\n    kind: gate\n    checks: ['1 > 2']\n")
    code, out, _ = _main(monkeypatch, capsys, real_app, "run", str(spec), "--json", "--report-dir", str(tmp_path))
    assert code == 1 and json.loads(out)["error"]["type"] == "GateFailed"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: g\nsteps:\n  gate:\n    kind: nope\n")
    code, out, _ = _main(monkeypatch, capsys, real_app, "run", str(bad), "--json")
    assert code == 2 and json.loads(out)["error"]["exit_code"] == 2
