"""One config system: a command's config is one pydantic model (field = CLI flag = Python
argument), checked whole when built, and the CLI's options are built from its fields."""

from __future__ import annotations

import click
import pytest
import typer
from pydantic import Field

from slmops.cli import app
from slmops.cli.common import field_option
from slmops.configs import CommandConfig, ConfigError
from slmops.fleet.agent_config import AgentConfig
from slmops.ops.loadtest import BenchConfig
from slmops.ops.validate import ValidateConfig
from slmops.optimize.prune import PruneConfig
from slmops.optimize.run import OptimizeConfig


class Demo(CommandConfig):
    what = "demo settings"
    example = "Example: slmops demo"
    name: str = Field(description="A name.")
    steps: int = Field(3, ge=1, description="Steps to take.")
    mode: str | None = Field(None, description="A mode.")

    def problems(self) -> list[str]:
        return ["mode 'x' needs steps > 5"] if self.mode == "x" and self.steps <= 5 else []


def test_fields_positionally_or_by_name_and_every_problem_at_once():
    assert Demo("a", 4) == Demo(name="a", steps=4)
    with pytest.raises(ConfigError) as info:
        Demo("a", 0, "x", typo=1)
    msg = str(info.value)
    assert msg.startswith("Invalid demo settings: ") and msg.endswith("Example: slmops demo")
    assert "steps must be >= 1 (got 0)" in msg and "typo is not a known setting" in msg
    assert "mode 'x' needs steps > 5" in msg  # the cross-field rule, in the same error
    assert info.value.exit_code == 2
    with pytest.raises(TypeError):
        Demo("a", name="b")


def test_field_option_takes_flag_help_default_and_limits_from_the_field():
    opt = field_option(Demo, "steps")
    assert opt.default == 3 and opt.help == "Steps to take." and opt.min == 1
    assert field_option(Demo, "name").default is ...  # required stays required
    assert field_option(Demo, "mode", "-m", help="Other.").help == "Other."


def _params(*path: str) -> dict[str, click.Parameter]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("command,model,renamed", [
    ("bench", BenchConfig, {}),
    ("validate", ValidateConfig, {"eval_file": "eval"}),
    ("prune", PruneConfig, {}),
    ("optimize", OptimizeConfig, {}),
    ("agent run", AgentConfig, {}),
])
def test_cli_defaults_and_help_are_the_config_s(command, model, renamed):
    """No default or help text restated by hand: the command's options match its config."""
    checked = 0
    for name, param in _params(*command.split()).items():
        field = renamed.get(name, name)
        if field not in model.model_fields or param.param_type_name != "option":
            continue
        info = model.model_fields[field]
        default = None if info.is_required() else info.get_default()
        if isinstance(default, tuple | list) or field in ("labels", "json_schema"):
            continue  # spelled differently on the command line (1,2,4 / a path / comma-separated)
        assert param.default == default or (param.required and info.is_required()), (command, name)
        if info.description and field not in ("task",):
            assert param.help == info.description, (command, name)
        checked += 1
    assert checked >= 4


def test_a_bad_setting_from_the_library_is_one_input_error():
    with pytest.raises(ConfigError, match="soak_requests must be >= 1.*not both"):
        ValidateConfig("tiny", "qa.jsonl", soak_requests=0, regex="x", json_schema="s.json")
    with pytest.raises(ConfigError) as info:
        BenchConfig("tiny", concurrency=(0,), max_tokens=0)
    assert "concurrency levels must be >= 1" in str(info.value) and "max_tokens must be >= 1" in str(info.value)
