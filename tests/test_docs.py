"""The CLI reference is generated from the commands and must stay current; every command's
help ends with an example."""

from __future__ import annotations

from pathlib import Path

import typer

from slmops.cli import app
from slmops.cli.docs import render

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _leaf_commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path, cmd


def test_cli_reference_is_up_to_date():
    assert DOCS.read_text(encoding="utf-8") == render(app), (
        "docs/cli.md is stale: run `python -m slmops.cli.docs > docs/cli.md`"
    )


def test_every_command_help_ends_with_an_example():
    leaves = list(_leaf_commands(typer.main.get_command(app)))
    assert len(leaves) >= 9
    for path, cmd in leaves:
        last = (cmd.help or "").strip().splitlines()[-1]
        assert last.startswith("Example: slmops "), f"`slmops {' '.join(path)}` help lacks a closing example"
