"""``slmops models ...``: the catalog and the local store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, human_count, human_size, open_store, print_json, status
from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.models.catalog import CATALOG
from slmops.models.pull import pull
from slmops.models.refs import parse_ref, validate_name
from slmops.models.store import ModelRecord, folder_size

app = typer.Typer(help="List, pull, import, inspect, alias and remove models.", no_args_is_help=True)


def store_tree(records: list[ModelRecord]) -> list[tuple[int, ModelRecord]]:
    """Every record once, with its depth: a model whose parents are not in the store at the top,
    each derived model (adapter, pruned, optimized, distilled) under its first parent in the store."""
    refs = {r.ref for r in records}
    children: dict[str, list[ModelRecord]] = {}
    roots = []
    for r in records:
        parent = next((p for p in r.parents if p in refs and p != r.ref), None)
        (children.setdefault(parent, []) if parent else roots).append(r)
    out: list[tuple[int, ModelRecord]] = []
    seen: set[str] = set()

    def walk(r: ModelRecord, depth: int) -> None:
        if r.ref in seen:
            return
        seen.add(r.ref)
        out.append((depth, r))
        for c in children.get(r.ref, []):
            walk(c, depth + 1)

    for r in roots:
        walk(r, 0)
    for r in records:  # a parent cycle (not made by slmops) still shows every record
        walk(r, 0)
    return out


@app.command("list")
def list_models(as_json: JsonOpt = False) -> None:
    """List built-in models (with their pull state) and every model in the store; adapters
    are shown under their base.

    Example: slmops models list --json
    """
    store = open_store()
    records = store.list()
    pulled = {r.name for r in records}
    if as_json:
        print_json(
            {
                "catalog": [{**e.to_dict(), "pulled": e.name in pulled} for e in CATALOG.values()],
                "store": [r.to_dict() for r in records],
            }
        )
        return
    cat = Table(title="Built-in models")
    for col in ("name", "params", "arch", "license", "template", "size", "state"):
        cat.add_column(col, no_wrap=col == "name")
    for e in CATALOG.values():
        state = "pulled" if e.name in pulled else f"not pulled ({e.source.describe().split(':')[0]})"
        cat.add_row(
            e.name,
            human_count(e.parameters),
            e.architecture,
            e.license,
            e.template_name,
            f"{e.size_on_disk_mb} MB",
            state,
        )
    console.print(cat)
    table = Table(title=f"Store ({store.home})")
    for col in ("ref", "format", "size", "params", "aliases", "created"):
        table.add_column(col, no_wrap=col in ("ref", "format", "size", "params"))
    for depth, r in store_tree(records):
        table.add_row(
            f"{'  ' * depth}{'└ ' if depth else ''}{r.ref}", r.format, human_size(r.size_bytes),
            human_count(r.parameters), ",".join(r.aliases), r.created_at[:10],
        )
    console.print(table if records else "[dim]The store is empty: `slmops models pull smollm2-135m-instruct`.[/dim]")


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="name, name:version or name@alias")], as_json: JsonOpt = False
) -> None:
    """Show one model: format, path, size, parameters, lineage, recipe, metrics, aliases.

    Example: slmops models show smollm2-135m-instruct --json
    """
    rec = open_store().get(ref)
    if as_json:
        print_json(rec.to_dict())
        return
    table = Table(show_header=False, title=rec.ref)
    for key, value in rec.to_dict().items():
        if key == "size_bytes":
            value = f"{value} ({human_size(value)})"
        table.add_row(key, str(value))
    console.print(table)


UsernameOpt = Annotated[
    str | None, typer.Option("--username", help="Registry user [default: $SLMOPS_REGISTRY_USERNAME].")
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the registry password from stdin [default: $SLMOPS_REGISTRY_PASSWORD]."
    ),
]
PlainHttpOpt = Annotated[
    bool,
    typer.Option(
        "--plain-http",
        help="Allow plain HTTP to a registry that is not on loopback (loopback registries use it anyway).",
    ),
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Default registry for oci://REPO:TAG [default: $SLMOPS_REGISTRY, else what `fleet up` recorded].",
    ),
]


def _oci_client(ref, username: str | None, password_stdin: bool, plain_http: bool):
    import sys

    from slmops.fleet import oci

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    return oci.Client(ref.registry, credentials=oci.Credentials.from_env(username, password), plain_http=plain_http)


@app.command("push")
def push_cmd(
    ref: Annotated[str, typer.Argument(help="Store model: name[:version|@alias].")],
    target: Annotated[str, typer.Argument(help="oci://HOST[:PORT]/REPO:TAG")],
    sign: Annotated[Path | None, typer.Option("--sign", help="Sign with this private key (path or key name).")] = None,
    probe: Annotated[
        Path | None,
        typer.Option(
            "--probe",
            help="Probe prompts with expected answers (JSONL "
            "prompt/answer) that devices run before switching [default: the "
            "test set in the model's lineage, if any].",
        ),
    ] = None,
    probe_min_score: Annotated[
        float, typer.Option("--probe-min-score", min=0.0, max=1.0, help="Share of probe answers a device needs.")
    ] = 0.5,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    plain_http: PlainHttpOpt = False,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push a store model to an OCI registry as an slmops artifact: config = the model record
    (format, parameters, recipe, metrics, lineage, the sha256 of every file), one layer per file,
    optionally signed (cosign-style, tag sha256-HEX.sig). Prints the digest to pull or assign.

    Example: slmops models push support-bot:3 oci://127.0.0.1:5000/models/support-bot:v3 --sign release
    """
    from slmops.fleet import addresses, oci
    from slmops.fleet import probe as probes

    store = open_store()
    dest = oci.parse_oci(target, default_registry=addresses.registry(registry, home=store.home))
    items, source = (probes.load_probe(probe), str(probe)) if probe else probes.default_probe(store, ref)
    if source:
        status(f"probe: {len(items)} prompts from {source}")
    client = _oci_client(dest, username, password_stdin, plain_http)
    result = oci.push(
        store, ref, dest, client=client, sign_key=sign, probe=items, probe_min_score=probe_min_score, progress=status
    )
    if as_json:
        print_json({**result.to_dict(), "probe": len(items)})
    else:
        console.print(
            f"pushed {ref} to {result.reference} ({result.files} files, {human_size(result.bytes)}"
            f"{', signed' if result.signed else ''})",
            highlight=False,
        )


@app.command("pull")
def pull_cmd(
    name: Annotated[
        str,
        typer.Argument(
            help="A built-in model name (see `slmops models list`), or oci://HOST[:PORT]/REPO:TAG|@sha256:..."
        ),
    ],
    force: Annotated[bool, typer.Option("--force", help="Pull again as a new version even if present.")] = False,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="oci://: refuse an artifact not signed by this public key (path or key name)."),
    ] = None,
    store_name: Annotated[
        str | None, typer.Option("--name", help="oci://: store name [default: the artifact's].")
    ] = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    plain_http: PlainHttpOpt = False,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a built-in model, verify its checksum, convert it to a Hugging Face folder and
    register it; or pull an slmops artifact from an OCI registry, verifying every file's digest
    (and the signature with --trust) before registering it. Safe to repeat and to interrupt.

    Example: slmops models pull oci://127.0.0.1:5000/models/support-bot:v3 --trust release
    """
    from slmops.fleet import oci

    if oci.is_oci(name):
        from slmops.fleet import addresses

        store = open_store()
        ref = oci.parse_oci(name, default_registry=addresses.registry(registry, home=store.home))
        got = oci.pull(
            store,
            ref,
            client=_oci_client(ref, username, password_stdin, plain_http),
            trust=trust,
            name=store_name,
            progress=status,
        )
        if as_json:
            print_json(got.to_dict())
        elif got.already_present:
            console.print(f"{got.reference} is already in the store as {got.record.ref}", highlight=False)
        else:
            console.print(
                f"pulled {got.reference} as {got.record.ref} ({human_size(got.record.size_bytes)}, every "
                "file verified)",
                highlight=False,
            )
        return
    result = pull(name, open_store(), force=force, progress=status)
    if as_json:
        print_json({**result.record.to_dict(), "already_present": result.already_present})
    elif result.already_present:
        console.print(f"{result.record.ref} is already in the store at {result.record.path}")
    else:
        console.print(f"pulled {result.record.ref} ({human_size(result.record.size_bytes)}) to {result.record.path}")


@app.command("import")
def import_cmd(
    path: Annotated[Path, typer.Argument(help="HF folder, .gguf file, PEFT adapter folder or ONNX GenAI folder.")],
    name: Annotated[str, typer.Option("--name", help="Store name for the model.")],
    base: Annotated[str | None, typer.Option("--base", help="Base model reference (for a PEFT adapter).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a model from disk into the store as a new version of NAME.

    Example: slmops models import ./my-model --name support-bot
    """
    rec = import_model(open_store(), path, validate_name(name), base=base)
    if as_json:
        print_json(rec.to_dict())
    else:
        console.print(f"imported {path} as {rec.ref} ({rec.format}, {human_size(rec.size_bytes)})")


@app.command("rm")
def rm(
    ref: Annotated[str, typer.Argument(help="name (every version), name:version or name@alias")],
    force: Annotated[bool, typer.Option("--force", help="Remove even if other models depend on it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a model version, or every version of a name, from the store; with its last version go the
    run folders only it used ($SLMOPS_HOME/runs/finetune-NAME/ and the like). `slmops gc` reclaims the rest.

    Example: slmops models rm support-bot:1
    """
    store = open_store()
    try:
        name = str(parse_ref(ref, allow_path=False).name)
        runs = {folder: folder_size(folder) for folder in store.run_folders(name)}
    except (SlmopsError, ValueError):
        runs = {}  # store.remove names the problem
    gone = store.remove(ref, force=force)
    freed_runs = [folder for folder in runs if not folder.exists()]
    freed = sum(r.size_bytes for r in gone) + sum(runs[f] for f in freed_runs)
    if as_json:
        print_json({"removed": [r.ref for r in gone], "run_folders": [str(f) for f in freed_runs],
                    "freed_bytes": freed})
    else:
        extra = f" and {', '.join('runs/' + f.name for f in freed_runs)}" if freed_runs else ""
        console.print(f"removed {', '.join(r.ref for r in gone)}{extra} ({human_size(freed)} freed)")


@app.command("alias")
def alias(
    ref: Annotated[str, typer.Argument(help="The version to point at (name:version, or name for the latest).")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. prod, staging")],
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias instead of setting it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Point NAME@ALIAS at a version (or remove the alias with --delete).

    Example: slmops models alias support-bot:2 prod
    """
    store = open_store()
    if delete:
        rec = store.get(ref)
        store.remove_alias(rec.name, alias_name)
        rec = store.get(rec.ref)
    else:
        rec = store.set_alias(ref, alias_name)
    if as_json:
        print_json(rec.to_dict())
    else:
        console.print(f"{rec.name}@{alias_name} {'removed' if delete else '-> ' + rec.ref}")


@app.command("lineage")
def lineage_cmd(
    ref: Annotated[str, typer.Argument(help="Model: name[:version|@alias].")],
    as_json: JsonOpt = False,
) -> None:
    """Show how a model was made: the chain back through every step (register, optimize,
    distill or finetune, prune, pull) to the data files with their hashes and the teacher, with
    the metrics measured at each stage.

    Example: slmops models lineage support-router@prod
    """
    from slmops.models.lineage import lineage

    nodes = lineage(open_store(), ref)
    if as_json:
        print_json([n.to_dict() for n in nodes])
        return
    for n in nodes:
        pad = "    " * n.depth
        r = n.record
        aliases = f" @{', @'.join(r.aliases)}" if r.aliases else ""
        head = f"{pad}[bold]{r.ref}[/bold]{aliases}  {n.step} · {r.format} · {human_size(r.size_bytes)}"
        console.print(head + (f" · {human_count(r.parameters)} params" if r.parameters else ""), highlight=False)
        if n.details:
            console.print(pad + "  settings: " + ", ".join(f"{k}={v}" for k, v in n.details.items()), highlight=False)
        for what, digest in n.inputs.items():
            console.print(f"{pad}  input: {what}  {digest[:16] if len(digest) == 64 else digest}", highlight=False)
        shown = {k: v for k, v in n.metrics.items() if not k.endswith(("_at", "seed"))}
        if shown:
            items = list(shown.items())[:12]
            text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)
            console.print(f"{pad}  metrics: {text}", highlight=False)
