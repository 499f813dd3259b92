"""``slmops keys ...``: ed25519 signing keys for model artifacts."""

from __future__ import annotations

from typing import Annotated

import typer

from slmops.cli.common import JsonOpt, console, print_json

app = typer.Typer(help="Make signing keys for `models push --sign` and `--trust`.", no_args_is_help=True)


@app.command("generate")
def generate(
    name: Annotated[str, typer.Argument(help="Key name: writes $SLMOPS_HOME/keys/NAME.key and NAME.pub.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key of that name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an ed25519 key pair: the private key (mode 0600) signs pushes, the public key is
    what devices trust.

    Example: slmops keys generate release
    """
    from slmops.fleet import signing

    private, public = signing.generate(name, force=force)
    if as_json:
        print_json({"name": name, "private_key": str(private), "public_key": str(public)})
    else:
        console.print(f"private key {private} (keep it secret)\npublic key  {public} (give it to devices: --trust)")
