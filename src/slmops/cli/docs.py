"""Generate the CLI reference (docs/cli.md) from the commands themselves.

``python -m slmops.cli.docs > docs/cli.md``; a test fails when the file is out of date, so
the reference can never drift from ``--help``.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer


def _rows(cmd: Any) -> list[str]:
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name in ("install_completion", "show_completion"):
            continue
        if p.param_type_name == "argument":
            help_text = (getattr(p, "help", None) or "").replace("|", "\\|")
            rows.append(f"| `{(p.metavar or p.name).upper()}` | {help_text} | (argument) |")
            continue
        opts = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        default = "" if p.default is None or p.default is False or p.default == () else f"`{p.default}`"
        help_text = (p.help or "").replace("|", "\\|")
        rows.append(f"| {opts} | {help_text} | {default} |")
    return rows


def _walk(cmd: Any, path: list[str], out: list[str]) -> None:
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            _walk(cmd.commands[name], [*path, name], out)
        return
    out.append(f"## `{' '.join(path)}`\n")
    out.append(inspect.cleandoc(cmd.help or "") + "\n")
    rows = _rows(cmd)
    if rows:
        out.append("| parameter | description | default |\n|---|---|---|")
        out.extend(rows)
        out.append("")


def render(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    out = [
        "# slmops command reference",
        "",
        "Generated from the commands by `python -m slmops.cli.docs`; do not edit.",
        "",
    ]
    _walk(root, ["slmops"], out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    from slmops.cli import app

    print(render(app), end="")
