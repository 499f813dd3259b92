"""The ``slmops`` command line: a thin layer over the library.

Each command parses its flags, calls one library function and renders the result. Every
:class:`~slmops.errors.SlmopsError` becomes one line on stderr (the full traceback only with
``--debug``) and the error's exit code: 0 success, 1 a check that ran and failed (gate,
``optimize --strict``, ``validate``), 2 a usage or input error. With ``--json`` the error is
also printed on stdout as ``{"error": {"message", "hint", "exit_code", "type"}}``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from slmops import __version__
from slmops.cli import agent as agent_cmds
from slmops.cli import data as data_cmds
from slmops.cli import distill as distill_cmds
from slmops.cli import evaluate as evaluate_cmds
from slmops.cli import finetune as finetune_cmds
from slmops.cli import fleet as fleet_cmds
from slmops.cli import gc as gc_cmds
from slmops.cli import generate as generate_cmds
from slmops.cli import keys as keys_cmds
from slmops.cli import models as models_cmds
from slmops.cli import ops as ops_cmds
from slmops.cli import optimize as optimize_cmds
from slmops.cli import pipeline as pipeline_cmds
from slmops.cli import prune as prune_cmds
from slmops.cli import rollout as rollout_cmds
from slmops.cli import serve as serve_cmds
from slmops.cli import ui as ui_cmds
from slmops.cli.common import err_console, print_json, reflow_app_help
from slmops.errors import SlmopsError, error_json

app = typer.Typer(
    name="slmops",
    help="Distill, fine-tune, optimize, evaluate, register and serve small language models on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_cmds.app, name="models")
app.command("generate")(generate_cmds.generate)
app.command("chat")(generate_cmds.chat)
app.command("demo")(pipeline_cmds.demo)
app.command("run")(pipeline_cmds.run_cmd)
app.add_typer(pipeline_cmds.runs_app, name="runs")
app.command("eval")(evaluate_cmds.eval_cmd)
app.command("finetune")(finetune_cmds.finetune)
app.command("optimize")(optimize_cmds.optimize)
app.command("export")(optimize_cmds.export)
app.command("prune")(prune_cmds.prune)
app.command("serve")(serve_cmds.serve)
app.command("ui")(ui_cmds.ui)
app.command("bench")(ops_cmds.bench)
app.command("validate")(ops_cmds.validate)
app.add_typer(data_cmds.app, name="data")
app.add_typer(distill_cmds.app, name="distill")
app.add_typer(fleet_cmds.app, name="fleet")
app.add_typer(agent_cmds.app, name="agent")
app.add_typer(keys_cmds.app, name="keys")
app.add_typer(rollout_cmds.app, name="rollout")
app.command("gc")(gc_cmds.gc_cmd)
fleet_cmds.app.command("status")(rollout_cmds.fleet_status)
fleet_cmds.app.command("simulate")(rollout_cmds.fleet_simulate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slmops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    if debug:
        os.environ["SLMOPS_DEBUG"] = "1"


def main() -> None:
    """Console-script entry point: usage errors are typer's (exit 2); library errors become
    one line on stderr (plus a JSON object on stdout under ``--json``) with their exit code."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)  # returns the exit code of a typer.Exit; raises usage errors
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(1)
    except typer.TyperException as exc:  # a usage error: typer's own message, then the JSON object
        if not hasattr(exc, "format_message"):  # not a usage error: a bug in a command's declaration
            raise
        from typer import rich_utils

        rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
        code = getattr(exc, "exit_code", 2)
        if as_json:
            print_json({"error": {"message": exc.format_message(), "hint": None,  # type: ignore[attr-defined]
                                  "exit_code": code, "type": "UsageError"}})
        sys.exit(code)
    except SlmopsError as exc:
        if os.environ.get("SLMOPS_DEBUG"):
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        if as_json:
            print_json(error_json(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# last, once every command is registered: help paragraphs on one line (no mid-sentence breaks)
reflow_app_help(app)
