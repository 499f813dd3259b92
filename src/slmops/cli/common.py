"""Shared CLI pieces: consoles, option types that keep flags identical across commands,
JSON output, and the store/engine openers."""

from __future__ import annotations

import inspect
import json
import re
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from slmops.engines.base import GenerationParams
from slmops.models.store import ModelStore

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for inference (default: all cores).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens to generate per answer.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy; higher = more random.")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (0 < p <= 1).")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence (repeat for several).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed: same seed, same output.")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System prompt for chat models.")]


def make_params(max_tokens: int, temperature: float, top_p: float, stop: list[str] | None, seed: int | None):
    return GenerationParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop or ()), seed=seed
    )


def config_option(model: type[BaseModel], field: str, *extra: str, **kw: Any) -> Any:
    """A typer option named after a config field (flag = YAML key = Python argument), whose help
    is the field's description plus its default; ``flag=True`` makes a ``--x/--no-x`` switch."""
    flag = "--" + field.replace("_", "-")
    names = (f"{flag}/--no-{flag[2:]}",) if kw.pop("flag", False) else (flag, *extra)
    info = model.model_fields[field]
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    shown = f" [default: {default}]" if default not in (None, False, [], ()) else ""
    return typer.Option(*names, help=f"{info.description}{shown}", show_default=False, **kw)


_KEEP_BREAK = re.compile(r"^(\s|[-*•] |\d+[.)] |Example: )")


def reflow_help(doc: str | None) -> str | None:
    """A docstring as help text: each paragraph on one line (the terminal wraps it to its width),
    so ``--help`` shows no line break in mid-sentence; list items, indented lines and the
    closing ``Example:`` keep their own lines."""
    if not doc:
        return doc
    out: list[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        if out and out[-1].strip() and line.strip() and not _KEEP_BREAK.match(line):
            out[-1] = f"{out[-1].rstrip()} {line.strip()}"
        else:
            out.append(line.rstrip())
    return "\n".join(out)


def reflow_app_help(app: typer.Typer) -> None:
    """Apply :func:`reflow_help` to every command of ``app`` and its sub-apps, once, at start-up."""
    for info in app.registered_commands:
        if info.callback is not None:
            info.callback.__doc__ = reflow_help(info.callback.__doc__)
        info.help = reflow_help(info.help)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            group.typer_instance.info.help = reflow_help(group.typer_instance.info.help)
            reflow_app_help(group.typer_instance)


def field_option(model: type[BaseModel], field: str, *extra: str, **kw: Any) -> Any:
    """The typer option of a config field, all from the field: ``--flag-name`` (plus ``extra``
    names), the help text (its description), its default and its limits (``ge``/``le`` become
    ``min``/``max``). Use as ``name: TYPE = field_option(Config, "name")``; ``kw`` overrides
    (e.g. ``default=`` for a flag whose CLI spelling differs, ``envvar=``)."""
    info = model.model_fields[field]
    for bound in info.metadata:
        for attr, opt in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            value = getattr(bound, attr, None)
            if value is not None and isinstance(value, int | float):
                kw.setdefault(opt, value)
    default = kw.pop("default", ... if info.is_required() else info.get_default(call_default_factory=True))
    kw.setdefault("help", info.description)
    return typer.Option(default, "--" + field.replace("_", "-"), *extra, **kw)


def open_store() -> ModelStore:
    return ModelStore()


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def status(message: str) -> None:
    """Progress lines go to stderr so ``--json`` output on stdout stays clean."""
    err_console.print(f"[dim]{message}[/dim]")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def human_count(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
