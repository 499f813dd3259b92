"""``slmops finetune``: the options are the fields of :class:`~slmops.train.FinetuneConfig`.

Every option defaults to "not given" so that a ``--config`` YAML file supplies the value and
the command line overrides it; the config's own defaults apply last. The help text of each
option is the field's description, so the CLI, the YAML keys and the Python API never drift.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops import train as recipes
from slmops.cli.common import (
    JsonOpt,
    config_option,
    console,
    human_count,
    human_size,
    open_store,
    print_json,
)
from slmops.cli.progress import TrainBar
from slmops.models.store import ModelRecord
from slmops.train import FinetuneConfig, FinetuneResult, SearchResult, load_config


def _opt(field: str, *extra: str, **kw: Any) -> Any:
    return config_option(FinetuneConfig, field, *extra, **kw)


def finetune(
    model: Annotated[str | None, _opt("model", "-m")] = None,
    data: Annotated[list[Path] | None, _opt("data", "-d")] = None,
    output: Annotated[str | None, _opt("output", "-o")] = None,
    method: Annotated[str | None, _opt("method")] = None,
    eval_data: Annotated[Path | None, _opt("eval_data")] = None,
    eval_split: Annotated[float | None, _opt("eval_split")] = None,
    max_steps: Annotated[int | None, _opt("max_steps")] = None,
    epochs: Annotated[float | None, _opt("epochs")] = None,
    lr: Annotated[float | None, _opt("lr")] = None,
    batch_size: Annotated[int | None, _opt("batch_size")] = None,
    grad_accum: Annotated[int | None, _opt("grad_accum")] = None,
    max_seq_len: Annotated[int | None, _opt("max_seq_len")] = None,
    truncation: Annotated[str | None, _opt("truncation")] = None,
    warmup: Annotated[int | None, _opt("warmup")] = None,
    weight_decay: Annotated[float | None, _opt("weight_decay")] = None,
    max_grad_norm: Annotated[float | None, _opt("max_grad_norm")] = None,
    lora_r: Annotated[int | None, _opt("lora_r")] = None,
    lora_alpha: Annotated[int | None, _opt("lora_alpha")] = None,
    lora_dropout: Annotated[float | None, _opt("lora_dropout")] = None,
    target_modules: Annotated[list[str] | None, _opt("target_modules")] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    gradient_checkpointing: Annotated[bool | None, _opt("gradient_checkpointing", flag=True)] = None,
    text_template: Annotated[str | None, _opt("text_template")] = None,
    train_on_prompt: Annotated[bool | None, _opt("train_on_prompt", flag=True)] = None,
    packing: Annotated[bool | None, _opt("packing", flag=True)] = None,
    eval_interval: Annotated[int | None, _opt("eval_interval")] = None,
    save_interval: Annotated[int | None, _opt("save_interval")] = None,
    keep_checkpoints: Annotated[int | None, _opt("keep_checkpoints")] = None,
    patience: Annotated[int | None, _opt("patience")] = None,
    resume: Annotated[bool | None, _opt("resume", flag=True)] = None,
    teacher: Annotated[str | None, _opt("teacher")] = None,
    kd_loss: Annotated[str | None, _opt("kd_loss")] = None,
    kd_temperature: Annotated[float | None, _opt("kd_temperature")] = None,
    kd_weight: Annotated[float | None, _opt("kd_weight")] = None,
    kd_top_k: Annotated[int | None, _opt("kd_top_k")] = None,
    report_to: Annotated[list[str] | None, _opt("report_to")] = None,
    search: Annotated[Path | None, _opt("search")] = None,
    trials: Annotated[int | None, _opt("trials")] = None,
    sampler: Annotated[str | None, _opt("sampler")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with the same keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a model (full, LoRA or QLoRA) on your data and register the result.

    Data: JSONL/JSON/CSV/Parquet records with a 'messages' list, 'prompt'+'completion', or
    any fields used by --text-template (the last {field} is the answer). Loss is on answer
    tokens only unless --train-on-prompt. Checkpoints and metrics.jsonl go to
    $SLMOPS_HOME/runs/finetune-OUTPUT/; --resume continues an interrupted run.
    --search SPACE.yaml --trials N tries N settings (Optuna; weak trials pruned) and registers
    the best. --teacher REF adds logit-level KD from a local model with the same tokenizer:
    loss = (1 - kd_weight) * CE + kd_weight * KD. Several processes: torchrun
    --nproc-per-node 2 -m slmops finetune ...

    Example: slmops finetune --model smollm2-135m-instruct --data qa.jsonl --text-template "Q: {question}\\nA: {answer}" --method lora --max-steps 30 --output my-adapter
    """  # noqa: E501
    options = {k: v for k, v in locals().items() if k in FinetuneConfig.model_fields}
    cfg = load_config(config, options)
    main = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun only rank 0 prints
    with TrainBar(enabled=not as_json and main) as bar:
        recipe = recipes.search if cfg.search else recipes.run
        outcome = recipe(cfg, store=open_store(), progress=bar.update)
    if not main:
        return
    if as_json:
        print_json(outcome.to_dict())
        return
    if isinstance(outcome, SearchResult):
        console.print(_search_table(outcome))
    _summary(outcome.best if isinstance(outcome, SearchResult) else outcome)


def _search_table(res: SearchResult) -> Table:
    names = list(dict.fromkeys(k for t in res.trials for k in t.params))
    table = Table(title=f"search: {len(res.trials)} trials, best #{res.best_trial}")
    for col in ["trial", "state", *names, "eval loss", "best step", "steps", "tok/s"]:
        table.add_column(col, justify="left" if col == "state" else "right")
    for t in res.trials:
        vals = [f"{t.params[n]:.3g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "")) for n in names]
        loss = f"{t.eval_loss:.4f}" if t.eval_loss is not None else "-"
        mark = " *" if t.number == res.best_trial else ""
        table.add_row(f"{t.number}{mark}", t.state, *vals, loss, str(t.best_step), str(t.steps),
                      f"{t.tokens_per_second:.0f}")  # fmt: skip
    return table


def weights_text(rec: ModelRecord, in_memory: int) -> str:
    """What was saved: an adapter's own size on disk (its base is only borrowed), else the weights'."""
    if rec.format == "peft-adapter":
        return f"adapter {human_size(rec.size_bytes)} (trained on a {human_size(in_memory)} base in memory)"
    return f"weights {human_size(rec.size_bytes)}"


def _summary(result: FinetuneResult) -> None:
    rec = result.record
    eval_part = (
        f", best eval loss {result.eval_loss:.4f} (ppl {result.perplexity:.2f}) at step {result.best_step}"
        if (result.eval_loss is not None)
        else ""
    )
    console.print(
        f"registered [bold]{rec.ref}[/bold] ({rec.format}{', base ' + rec.parents[0] if rec.parents else ''}): "
        f"{result.steps} steps, train loss {result.train_loss:.4f}{eval_part}; "
        f"{result.tokens_per_second:.0f} tokens/s, {weights_text(rec, result.weight_bytes)}, "
        f"{human_count(result.trainable_parameters)} trained parameters"
        + (" (stopped early)" if result.stopped_early else "")
    )


