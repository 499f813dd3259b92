"""``slmops distill generate | train | report | run``: a thin layer over :mod:`slmops.distill`.

Option help comes from the config fields (``GenerateConfig``, ``FinetuneConfig``), so the CLI,
the YAML keys and the Python API never drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import (
    JsonOpt,
    ThreadsOpt,
    config_option,
    console,
    field_option,
    open_store,
    print_json,
    status,
)
from slmops.cli.evaluate import render_table
from slmops.cli.finetune import weights_text
from slmops.cli.progress import GenerateBar, TrainBar
from slmops.distill.config import GenerateConfig, make_generate_config
from slmops.distill.generate import GenerateResult, run_generate
from slmops.distill.report import distill_report
from slmops.distill.run import DistillRunConfig, run_distill
from slmops.distill.train import DistillTrainConfig, run_train
from slmops.evaluate.builtin import resolve_data
from slmops.evaluate.run import EvalConfig, default_report_dir
from slmops.train import FinetuneConfig

app = typer.Typer(
    help="Distill a task from a teacher into a small student: generate, train, report.", no_args_is_help=True
)


def _g(field: str, *extra: str, **kw: Any) -> Any:
    return config_option(GenerateConfig, field, *extra, **kw)


def _f(field: str, *extra: str, **kw: Any) -> Any:
    return config_option(FinetuneConfig, field, *extra, **kw)


@app.command("generate")
def generate(
    teacher: Annotated[str, _g("teacher")],
    data: Annotated[str, _g("data", "-d")],
    task: Annotated[str, _g("task", "-t")],
    output: Annotated[Path, _g("output", "-o")],
    input_field: Annotated[str | None, _g("input_field")] = None,
    target_field: Annotated[str | None, _g("target_field")] = None,
    labels: Annotated[str | None, _g("labels")] = None,
    n: Annotated[int | None, _g("n")] = None,
    temperature: Annotated[float | None, _g("temperature")] = None,
    top_p: Annotated[float | None, _g("top_p")] = None,
    max_tokens: Annotated[int | None, _g("max_tokens")] = None,
    batch_size: Annotated[int | None, _g("batch_size")] = None,
    concurrency: Annotated[int | None, _g("concurrency")] = None,
    rps: Annotated[float | None, _g("rps")] = None,
    resume: Annotated[bool, _g("resume")] = False,
    system: Annotated[str | None, _g("system")] = None,
    few_shot: Annotated[int | None, _g("few_shot")] = None,
    cot: Annotated[bool, _g("cot")] = False,
    recipe: Annotated[Path | None, _g("recipe")] = None,
    regex: Annotated[str | None, _g("regex")] = None,
    json_schema: Annotated[Path | None, _g("json_schema")] = None,
    vote: Annotated[bool, _g("vote")] = False,
    seed: Annotated[int | None, _g("seed")] = None,
    threads: ThreadsOpt = None,
    limit: Annotated[int | None, _g("limit")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 1: the teacher answers your input records; validated answers become synthetic data.

    Records carry their text in 'prompt' (or --input-field, or chat 'messages') and may carry
    a gold 'answer' (used for --few-shot examples and to infer the label set). The output is
    append-only JSONL, fsynced per batch; rejected answers go to <stem>.rejected.jsonl with
    their reason. Interrupted (even by kill -9)? Rerun with --resume: nothing is lost or
    duplicated. A teacher URL (http://host:port/v1#model) is any OpenAI-compatible server.

    Example: slmops distill generate --teacher smollm2-135m-instruct --data tickets.jsonl --task classification --labels billing,technical,account,other --output synthetic.jsonl
    """  # noqa: E501
    options = {k: v for k, v in locals().items() if k in GenerateConfig.model_fields}
    config = make_generate_config(**options)
    with GenerateBar(enabled=not as_json) as bar:
        result = run_generate(config, store=open_store(), progress=bar.update)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(filter_table(result))
    console.print(
        f"{result.counts.get('accepted', 0)} accepted records in {result.output}; rejects in {result.rejected_file}; "
        f"{result.generated} samples generated now ({result.resumed} from earlier runs), "
        f"{result.tokens_per_second:.1f} tokens/s"
    )


def filter_table(result: GenerateResult) -> Table:
    table = Table(title=f"synthetic data: {result.inputs} inputs, {result.samples} samples", title_justify="left")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")
    total = sum(result.counts.values()) or 1
    for reason, count in result.counts.items():
        name = reason if reason == "accepted" else f"rejected: {reason}"
        table.add_row(name, str(count), f"{100 * count / total:.1f}%")
    if result.duplicate_inputs:
        table.add_row("skipped: duplicate input", str(result.duplicate_inputs), "")
    return table


@app.command("train")
def train(
    student: str = field_option(DistillTrainConfig, "student", "-m"),
    synthetic: list[Path] = field_option(DistillTrainConfig, "synthetic", "-s"),
    output: str | None = field_option(DistillTrainConfig, "output", "-o"),
    method: Annotated[str | None, _f("method")] = None,
    max_steps: Annotated[int | None, _f("max_steps")] = None,
    epochs: Annotated[float | None, _f("epochs")] = None,
    lr: Annotated[float | None, _f("lr")] = None,
    batch_size: Annotated[int | None, _f("batch_size")] = None,
    grad_accum: Annotated[int | None, _f("grad_accum")] = None,
    max_seq_len: Annotated[int | None, _f("max_seq_len")] = None,
    truncation: Annotated[str | None, _f("truncation")] = None,
    eval_split: Annotated[float | None, _f("eval_split")] = None,
    lora_r: Annotated[int | None, _f("lora_r")] = None,
    seed: Annotated[int | None, _f("seed")] = None,
    teacher: Annotated[str | None, _f("teacher")] = None,
    kd_loss: Annotated[str | None, _f("kd_loss")] = None,
    kd_temperature: Annotated[float | None, _f("kd_temperature")] = None,
    kd_weight: Annotated[float | None, _f("kd_weight")] = None,
    kd_top_k: Annotated[int | None, _f("kd_top_k")] = None,
    gradient_checkpointing: Annotated[bool | None, _f("gradient_checkpointing", flag=True)] = None,
    resume: Annotated[bool | None, _f("resume", flag=True)] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of any finetune keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 2: fine-tune the student on the teacher's accepted answers and register it.

    Accepted synthetic records become prompt/completion pairs, asked exactly as `slmops eval`
    asks (so training and testing match), and train through the fine-tuning recipe (LoRA by
    default; any `slmops finetune` key via --config). With --teacher (a local model with the
    student's tokenizer) the student also learns the teacher's token distributions: logit-level
    KD (--kd-loss, --kd-temperature, --kd-weight, --kd-top-k) mixed with cross-entropy. The
    teachers, the SHA-256 of each synthetic file and the filter counts are recorded as the
    model's lineage.

    Example: slmops distill train --student smollm2-135m-instruct --synthetic synthetic.jsonl --max-steps 100 --teacher smollm2-135m-instruct --kd-loss jsd --kd-weight 0.5 --output support-student
    """  # noqa: E501
    overrides = {k: v for k, v in locals().items() if k in FinetuneConfig.model_fields and v is not None}
    with TrainBar(enabled=not as_json) as bar:
        settings = DistillTrainConfig(student, tuple(synthetic), output, overrides, config)
        result = run_train(settings, store=open_store(), progress=bar.update)
    if as_json:
        print_json(result.to_dict())
        return
    ft, lineage = result.finetune, result.lineage
    console.print(
        f"registered [bold]{result.record.ref}[/bold] ({result.record.format}): {ft.train_examples} examples from "
        f"{lineage['records']} synthetic records of {lineage['teacher']}"
        + (f", logit KD from {result.record.recipe['kd']['teacher']}" if "kd" in result.record.recipe else "")
        + f", {ft.steps} steps, train loss "
        f"{ft.train_loss:.4f}, {weights_text(result.record, ft.weight_bytes)}"
    )


@app.command("report")
def report(
    teacher: Annotated[str, typer.Option("--teacher", help="The teacher (the baseline of every percentage).")],
    student: Annotated[list[str], typer.Option("--student", help="A student to compare (repeat for several).")],
    data: Annotated[str, typer.Option("--data", "-d", help="Test set with gold answers, or builtin:NAME.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task type of the test set (as for slmops eval).")],
    labels: Annotated[str | None, typer.Option("--labels", help="Label set, comma-separated.")] = None,
    input_field: Annotated[str, typer.Option("--input-field", help="Field holding the input text.")] = "prompt",
    target_field: Annotated[str, typer.Option("--target-field", help="Field holding the gold answer.")] = "answer",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Most tokens per answer.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per generation batch.")] = 8,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N records.")] = None,
    latency_samples: Annotated[
        int, typer.Option("--latency-samples", min=0, help="Requests timed one at a time for latency p50/p95.")
    ] = 5,
    threads: ThreadsOpt = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="Where report.json/.md/.html go (default: $SLMOPS_HOME/evals/...)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the teacher with its students on a test set: quality, latency, memory, size.

    Runs `slmops eval` with the teacher as the baseline and prints the numbers users quote:
    inference time reduction, memory reduction and the share of the teacher's quality kept.

    Example: slmops distill report --teacher smollm2-135m-instruct --student support-student:1 --data builtin:support-tickets --task classification
    """  # noqa: E501
    store = open_store()
    out_dir = report_dir or default_report_dir(store, task, resolve_data(data)[1])
    config = EvalConfig((teacher, *student), data, task, labels=labels, input_field=input_field,
                        target_field=target_field, max_tokens=max_tokens, batch_size=batch_size, limit=limit,
                        latency_samples=latency_samples, threads=threads, report_dir=out_dir)
    result = distill_report(config, store=store, progress=status)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(render_table(result.eval))
    for s in result.students:
        console.print(s.headline(result.primary_metric))
    console.print(f"[dim]reports: {', '.join(result.eval.report_files.values())}[/dim]")


_RUN = DistillRunConfig()  # the defaults the options show


@app.command("run")
def run(
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher: store or catalog name, or path.")] = _RUN.teacher,
    data: Annotated[str, typer.Option("--data", "-d", help="Training prompts, or builtin:NAME.")] = _RUN.data,
    test: Annotated[str, typer.Option("--test", help="Test set with gold answers, or builtin:NAME.")] = _RUN.test,
    task: Annotated[str, typer.Option("--task", "-t", help="Task type (as for distill generate).")] = _RUN.task,
    labels: Annotated[str | None, typer.Option("--labels", help="Label set, comma-separated.")] = None,
    student: Annotated[
        str | None, typer.Option("--student", help="The student as a model reference (instead of --student-layers).")
    ] = None,
    student_layers: Annotated[
        str | None,
        typer.Option("--student-layers", help="Derive the student by pruning the teacher to N layers (or a fraction)."),
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Store name of the distilled student.")] = None,
    few_shot: Annotated[int, typer.Option("--few-shot", min=0, help="Teacher-side few-shot examples.")] = 0,
    method: Annotated[str, typer.Option("--method", help="How the student trains: full or lora.")] = _RUN.method,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Student training steps.")] = _RUN.max_steps,
    lr: Annotated[float, typer.Option("--lr", help="Student learning rate.")] = _RUN.lr,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Student batch size.")] = _RUN.batch_size,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N training prompts.")] = None,
    test_limit: Annotated[int | None, typer.Option("--test-limit", min=1, help="Use the first N test records.")] = None,
    latency_samples: Annotated[
        int, typer.Option("--latency-samples", min=0, help="Requests timed one at a time for latency p50/p95.")
    ] = _RUN.latency_samples,
    threads: ThreadsOpt = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Where report.json/.md/.html go (default: $SLMOPS_HOME/evals).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Distill end to end: (prune the teacher into a student,) generate, train, then compare.

    The teacher answers the training prompts (resumable: a rerun reuses its answers), the
    student learns the accepted answers, and the teacher, the un-distilled student and the
    distilled student are evaluated on the held-out test set: accuracy, macro-F1, latency
    p50/p95, tokens/s, memory, size, parameters, with the inference time reduction, memory
    reduction and accuracy retention against the teacher (Markdown, JSON and HTML reports).
    Without --student, the student is the teacher pruned to --student-layers (default 10);
    without --data/--test, the built-in support-language task.

    Example: slmops distill run --teacher smollm2-135m-instruct --student-layers 10 --max-steps 30
    """
    if student is None and student_layers is None:
        student_layers = _RUN.student_layers
    config = DistillRunConfig(
        teacher=teacher, data=data, test=test, task=task, labels=labels, student=student,
        student_layers=student_layers, output=output, few_shot=few_shot, method=method, max_steps=max_steps,
        lr=lr, batch_size=batch_size, limit=limit, test_limit=test_limit, latency_samples=latency_samples,
        threads=threads, report_dir=report_dir,
    )
    with _RunProgress(enabled=not as_json) as bar:
        result = run_distill(config, store=open_store(), progress=bar.update)
    if as_json:
        print_json(result.to_dict())
        return
    report = result.report
    console.print(filter_table(result.generate))
    console.print(render_table(report.eval))
    for s in report.students:
        console.print(s.headline(report.primary_metric))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    console.print(f"distilled student: [bold]{result.distilled}[/bold] (from {result.student}); {steps}")
    console.print(f"[dim]reports: {', '.join(report.eval.report_files.values())}[/dim]")


class _RunProgress:
    """One stage at a time: status lines for prune/evaluate, the generate and train bars for theirs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __enter__(self) -> _RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def update(self, stage: str, event: Any) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self._close()
            self.stage = stage
            status(f"-- {stage}")
            if stage in ("generate", "train"):
                self.bar = (GenerateBar(True) if stage == "generate" else TrainBar(True)).__enter__()
        if self.bar is not None:
            self.bar.update(event)
        else:
            status(str(event))
