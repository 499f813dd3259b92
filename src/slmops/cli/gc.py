"""``slmops gc``: report and reclaim space in the store that no model needs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, human_size, open_store, print_json


def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be removed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Reclaim space in $SLMOPS_HOME that no model needs: staging debris in tmp/, artifact folders without an
    index entry, run folders (checkpoints, search trials, distill data) of models no longer in the store, and
    stale pipeline cache entries. Anything touched in the last hour is left alone (it may be in use).

    Example: slmops gc --dry-run
    """
    from slmops.pipeline.gc import gc

    result = gc(open_store(), dry_run=dry_run)
    if as_json:
        print_json(result.to_dict())
        return
    if not result.items:
        console.print(f"nothing to reclaim in {result.home}")
        return
    table = Table(title=f"{'Would remove' if dry_run else 'Removed'} ({result.home})")
    for col in ("kind", "path", "size", "why"):
        table.add_column(col, no_wrap=col in ("kind", "size"))
    for g in result.items:
        table.add_row(g.kind, str(g.path.relative_to(result.home)), human_size(g.size_bytes), g.why)
    console.print(table)
    verb = "would free" if dry_run else "freed"
    console.print(f"{len(result.items)} item(s), {verb} {human_size(result.size_bytes)}")
