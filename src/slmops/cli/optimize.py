"""``slmops optimize``: merge, convert (ONNX GenAI, GGUF), quantize, measure, register."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import JsonOpt, console, err_console, field_option, human_size, open_store, print_json, status
from slmops.optimize import optimize as run_optimize
from slmops.optimize.run import OptimizeConfig

RefArg = Annotated[str, typer.Argument(help=OptimizeConfig.model_fields["ref"].description)]


def optimize(
    ref: RefArg,
    to: str | None = field_option(OptimizeConfig, "to"),
    merge: bool = field_option(OptimizeConfig, "merge"),
    precision: str | None = field_option(OptimizeConfig, "precision"),
    quant: str | None = field_option(OptimizeConfig, "quant"),
    block_size: int = field_option(OptimizeConfig, "block_size"),
    symmetric: Annotated[
        bool, typer.Option("--symmetric/--asymmetric", help=OptimizeConfig.model_fields["symmetric"].description)
    ] = True,
    accuracy_level: int | None = field_option(OptimizeConfig, "accuracy_level"),
    algorithm: str | None = field_option(OptimizeConfig, "algorithm"),
    device: str = field_option(OptimizeConfig, "device"),
    output: str | None = field_option(OptimizeConfig, "output", "-o"),
    max_ppl_increase: float | None = field_option(OptimizeConfig, "max_ppl_increase"),
    strict: bool = field_option(OptimizeConfig, "strict"),
    ppl_text: Path | None = field_option(OptimizeConfig, "ppl_text"),
    eval_data: str | None = field_option(OptimizeConfig, "eval_data"),
    eval_task: str | None = field_option(OptimizeConfig, "eval_task"),
    no_task_check: bool = field_option(OptimizeConfig, "no_task_check"),
    keep_adapters: bool = field_option(OptimizeConfig, "keep_adapters"),
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="With --keep-adapters: another adapter of the same base to keep (repeat)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a model for deployment and register the result with its lineage.

    --to onnx builds an ONNX Runtime GenAI model (onnxruntime-genai's model builder), --to gguf
    writes a GGUF file for llama.cpp and Ollama, --merge folds an adapter into its base (an
    adapter is merged automatically before --to, unless --keep-adapters exports it as a
    separate adapter file beside one ONNX base, picked per request). Every run measures size
    and perplexity on held-out text against the source, stores them in the new model's metrics
    and prints them; when the source's lineage has a test set (an `slmops eval` result in the
    store, or a fine-tune's eval data) or --eval-data names one, the task metric is compared too.

    Example: slmops optimize smollm2-135m-instruct --to onnx --precision int4 --max-ppl-increase 10
    """
    options = {k: v for k, v in locals().items() if k in OptimizeConfig.model_fields}
    config = OptimizeConfig(**options, adapters=tuple(adapter or ()))
    result = run_optimize(config, store=open_store(), progress=status)
    if as_json:
        print_json(result.to_dict())
        return
    q = result.quality
    table = Table(title=f"{result.source} -> {result.record.ref} ({result.record.format})")
    for col in ("", "source", "result", "change"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("size", human_size(q.source_size_bytes), human_size(q.size_bytes), f"-{q.size_reduction_pct:.1f}%")
    inc = q.perplexity_increase_pct
    table.add_row(
        f"perplexity ({q.tokens} tokens)",
        _num(q.source_perplexity),
        _num(q.perplexity),
        "-" if inc is None else f"{inc:+.2f}%",
    )
    t = q.task
    if t is not None:
        d = t.delta_points
        table.add_row(
            f"{t.metric} ({t.dataset}, {t.records} records)",
            _num(t.source_score),
            _num(t.score),
            "-" if d is None else f"{d:+.2f} pts",
        )
    console.print(table)
    if t is not None and t.error:
        err_console.print(f"[bold yellow]task metric incomplete:[/bold yellow] {t.error}")
    if result.flagged:
        err_console.print(
            f"[bold yellow]flagged:[/bold yellow] perplexity rose more than {q.max_ppl_increase_pct}% "
            f"(registered anyway; pass --strict to refuse)."
        )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def export(
    ref: RefArg,
    format: Annotated[str, typer.Option("--format", "-f", help="Bundle: foundry (ONNX), ollama (GGUF) or hf.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle folder to create (must not exist).")],
    as_json: JsonOpt = False,
) -> None:
    """Write a self-contained deployment bundle with a manifest (lineage, sha256 of every file).

    foundry: the ONNX GenAI folder plus inference_model.json for Foundry Local; ollama: the
    GGUF plus a Modelfile (chat TEMPLATE, stop, defaults) for `ollama create`; hf: a plain
    Hugging Face folder.

    Example: slmops export smollm2-135m-instruct-gguf-q8_0 --format ollama --output ./ollama-bundle
    """
    from slmops.optimize.bundle import export_bundle

    manifest = export_bundle(ref, format, output, store=open_store())
    if as_json:
        print_json({"output": str(output), **manifest})
        return
    console.print(f"Wrote the {format} bundle of {manifest['ref']} to {output} ({len(manifest['files'])} files).")
