"""``slmops prune``: a smaller student by dropping the least important transformer layers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from slmops.cli.common import (
    JsonOpt,
    ThreadsOpt,
    console,
    field_option,
    human_count,
    human_size,
    open_store,
    print_json,
    status,
)
from slmops.optimize.prune import PruneConfig
from slmops.optimize.prune import prune as run_prune


def prune(
    ref: Annotated[str, typer.Argument(help=PruneConfig.model_fields["ref"].description)],
    keep_layers: str = field_option(PruneConfig, "keep_layers", "-k"),
    output: str | None = field_option(PruneConfig, "output", "-o"),
    calibration: str | None = field_option(PruneConfig, "calibration"),
    calibration_tokens: int = field_option(PruneConfig, "calibration_tokens"),
    seq_len: int = field_option(PruneConfig, "seq_len"),
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Derive a smaller model by dropping its least important transformer layers.

    Each layer is scored by its block influence on calibration data (1 - cosine similarity of
    the hidden states entering and leaving it: a layer that barely changes them matters
    least); the lowest-scoring layers go. The result is a Hugging Face folder (config,
    renumbered safetensors, tokenizer, chat template) registered with its lineage: the source,
    kept and removed layers, every score and the calibration data's hash. Distillation
    (`slmops distill train`) then recovers the quality.

    Example: slmops prune smollm2-135m-instruct --keep-layers 15 --output smollm2-15l
    """
    config = PruneConfig(ref, keep_layers, output, calibration, calibration_tokens, seq_len, threads)
    result = run_prune(config, store=open_store(), progress=status)
    if as_json:
        print_json(result.to_dict())
        return
    rec = result.record
    table = Table(title=f"{result.source} -> {rec.ref}: kept {len(result.kept)} of {result.layers} layers")
    for col in ("removed layer", "block influence"):
        table.add_column(col, justify="right")
    for index, score in result.removed:
        table.add_row(str(index), f"{score:.4f}")
    console.print(table)
    console.print(
        f"kept layers {result.kept}; calibration perplexity {result.perplexity_before:.2f} -> "
        f"{result.perplexity_after:.2f} ({result.calibration['tokens']} tokens of {result.calibration['source']}); "
        f"{human_count(rec.parameters)} parameters, {human_size(rec.size_bytes)}"
    )
