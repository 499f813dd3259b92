"""The `finetune` command: options = config fields = YAML keys, --config, --json, clean errors."""

from __future__ import annotations

import inspect
import json

import pytest
import typer
from typer.testing import CliRunner

from slmops.cli.finetune import finetune
from slmops.errors import SlmopsError
from slmops.train import FinetuneConfig, load_config, make_config


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("finetune")(finetune)
    app.command("noop", hidden=True)(lambda: None)  # keeps `finetune` a named sub-command
    return app


def test_cli_parameters_are_the_config_fields():
    params = set(inspect.signature(finetune).parameters) - {"config", "as_json"}
    assert params == set(FinetuneConfig.model_fields)


def test_config_errors_are_reported_together(tmp_path):
    with pytest.raises(SlmopsError) as err:
        make_config({"model": "m", "data": "d.jsonl", "output": "o", "lerning_rate": 1, "max-stepz": 3})
    assert "unknown key 'lerning_rate'" in str(err.value) and "did you mean 'max_steps'?" in str(err.value)
    with pytest.raises(SlmopsError) as err:
        make_config({"data": "d.jsonl", "output": "o", "method": "dora", "lr": -1})
    msg = str(err.value)
    assert "--model: Field required" in msg and "--method" in msg and "--lr" in msg
    with pytest.raises(SlmopsError, match="--patience needs evaluation data"):
        make_config({"model": "m", "data": "d.jsonl", "output": "o", "patience": 2})
    yml = tmp_path / "ft.yaml"
    yml.write_text("model: m\ndata: d.jsonl\noutput: o\nmax-steps: 5\nlr: 0.1\n")
    cfg = load_config(yml, {"lr": 0.5, "method": None})
    assert (cfg.max_steps, cfg.lr, cfg.method, cfg.data[0].name) == (5, 0.5, "lora", "d.jsonl")


def test_finetune_command_with_yaml_config_and_json(app, store, tiny_model_dir, tmp_path):
    from slmops.models.artifacts import import_model

    import_model(store, tiny_model_dir, "tiny")
    data = tmp_path / "pc.csv"
    data.write_text("prompt,completion\nHello,world\nCapital of France?,Paris\n")
    yml = tmp_path / "ft.yaml"
    yml.write_text(f"model: tiny\ndata: {data}\noutput: pc\nmethod: full\nmax_steps: 3\nbatch_size: 1\n")
    result = CliRunner().invoke(app, ["finetune", "--config", str(yml), "--lr", "0.001", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["steps"] == 3 and out["record"]["ref"] == "pc:1" and out["record"]["format"] == "hf"
    assert out["record"]["recipe"]["config"]["lr"] == 0.001
    assert out["record"]["recipe"]["data_shapes"] == {"prompt-completion": 2}
    bad = CliRunner().invoke(app, ["finetune", "--config", str(yml), "--max-seq-len", "4"])
    assert isinstance(bad.exception, SlmopsError) and "--max-seq-len" in str(bad.exception)
