"""One runner per step kind: resolved settings in, a flat dict of outputs out.

Each runner calls the same library function as the command it mirrors; nothing here
re-implements training, conversion or evaluation. Work that can be interrupted (teacher
answers, training) lives under ``ctx.work_dir`` or the trainer's run folder, so a killed
pipeline resumes inside the step it was in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.checks import evaluate_check
from slmops.errors import CheckFailed, SlmopsError
from slmops.models.refs import validate_name
from slmops.models.store import ModelStore
from slmops.pipeline.cache import pipelines_dir, step_key
from slmops.pipeline.kinds import (
    DeploySettings,
    DistillSettings,
    EvaluateSettings,
    GateSettings,
    Kind,
    RegisterSettings,
    check_distill,
    check_evaluate,
    check_finetune,
    check_gate,
    check_optimize,
    check_prune,
    distill_schema,
    evaluate_schema,
    finetune_schema,
    normalize_finetune,
    optimize_schema,
    prune_schema,
)


class GateFailed(CheckFailed):
    """A gate's check did not hold; the pipeline stops and registers nothing after it (exit code 1)."""

    def __init__(self, step: str, failed: list[str], outputs: dict[str, Any]) -> None:
        super().__init__(f"Gate {step!r} failed: " + "; ".join(failed) + ".",
                         "The steps after the gate did not run. Improve the model (more data, more steps) "
                         "or change the thresholds, then run again: finished steps come from the cache.")
        self.outputs = outputs


class Observer:
    """What a pipeline reports while it runs; the CLI draws it, tests record it."""

    def step_started(self, name: str, kind: str, index: int, total: int) -> None: ...

    def step_finished(self, name: str, status: str, seconds: float, outputs: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...

    def train(self, event: Any) -> None: ...

    def generate(self, event: Any) -> None: ...


@dataclass(frozen=True)
class StepContext:
    store: ModelStore
    pipeline: str
    step: str
    work_dir: Path  # keyed by the step's cache key: survives a kill, reused on resume
    run_dir: Path
    observer: Observer
    raw: dict[str, Any]  # the settings as written, before ${steps...} were resolved
    lookup: Callable[[str], Any]  # resolves "steps.X.y" against earlier outputs

    def default_output(self) -> str:
        return validate_name(f"{self.pipeline}-{self.step}")


# -- shared pieces ---------------------------------------------------------------------------
def _finetune_resume(store: ModelStore, output: str) -> bool:
    """Continue an interrupted training of ``output`` (its checkpoints are in the trainer's run folder)."""
    from slmops.distill.stages import training_unfinished

    return training_unfinished(store, output)


def _curve(run_dir: Path) -> list[dict[str, float]]:
    """The training curve from the trainer's metrics log: step, loss and (when evaluated) eval_loss."""
    path = run_dir / "metrics.jsonl"
    points: list[dict[str, float]] = []
    if not path.exists():
        return points
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        point = {k: rec[k] for k in ("step", "loss", "eval_loss") if isinstance(rec.get(k), int | float)}
        if len(point) > 1:
            points.append(point)
    return points


def _train_outputs(result: Any) -> dict[str, Any]:
    return {"model": result.record.ref, "steps": result.steps, "train_loss": result.train_loss,
            "eval_loss": result.eval_loss, "perplexity": result.perplexity,
            "tokens_per_second": round(result.tokens_per_second, 1), "train_seconds": round(result.seconds, 1),
            "train_examples": result.train_examples, "resumed_from": result.resumed_from,
            "curve": _curve(result.run_dir)}


# -- runners ---------------------------------------------------------------------------------
def run_finetune(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.train.config import make_config
    from slmops.train.finetune import run

    values = normalize_finetune(settings)
    values.setdefault("output", ctx.default_output())
    values["resume"] = _finetune_resume(ctx.store, values["output"])
    if values["resume"]:
        ctx.observer.message(f"resuming the interrupted training of {values['output']}")
    config = make_config(values, f"step {ctx.step}")
    return _train_outputs(run(config, store=ctx.store, progress=ctx.observer.train))


def run_distill(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.distill.config import make_generate_config
    from slmops.distill.stages import generate_then_train

    s = DistillSettings(**settings)
    # the teacher's answers depend only on the generate settings: a change to the training
    # settings re-trains the student from the answers already there
    gen_key = step_key("distill-generate", {"teacher": s.teacher, **s.generate}, ctx.store)
    gen_dir = pipelines_dir(ctx.store) / "work" / f"generate-{gen_key[:20]}"
    gen_dir.mkdir(parents=True, exist_ok=True)
    gen = make_generate_config(**s.generate, teacher=s.teacher, output=gen_dir / "synthetic.jsonl", resume=True)
    two = generate_then_train(gen, s.student, s.output or ctx.default_output(), train_options=s.train,
                              store=ctx.store, on_generate=ctx.observer.generate, on_train=ctx.observer.train,
                              say=ctx.observer.message)
    return {**_train_outputs(two.train.finetune), "model": two.train.record.ref, "synthetic": str(two.generate.output),
            "accepted": two.accepted, "rejected": two.rejected,
            "teacher_tokens_per_second": round(two.generate.tokens_per_second, 1)}


def run_prune(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.optimize.prune import PruneConfig, prune

    options = {k: v for k, v in settings.items() if k != "model"}
    config = PruneConfig(ref=settings["model"], **{"output": ctx.default_output(), **options})
    result = prune(config, store=ctx.store, progress=ctx.observer.message)
    return {"model": result.record.ref, "removed_layers": [i for i, _ in result.removed],
            "layers": len(result.kept), "loss_before": result.loss_before, "loss_after": result.loss_after,
            "parameters": result.record.parameters, "size_mb": round(result.record.size_bytes / 2**20, 1)}


def run_optimize(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.optimize.run import OptimizeConfig, optimize

    options = {k: v for k, v in settings.items() if k != "model"}
    config = OptimizeConfig(ref=settings["model"], **{"output": ctx.default_output(), **options})
    r = optimize(config, store=ctx.store, progress=ctx.observer.message)
    q = r.quality.to_dict()
    return {"model": r.record.ref, "size_mb": round(r.record.size_bytes / 2**20, 1), "flagged": r.flagged,
            **{k: q[k] for k in ("size_reduction_pct", "perplexity_increase_pct", "source_perplexity", "perplexity")
               if k in q}}


def run_evaluate(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.evaluate.run import EvalConfig, evaluate

    core = EvaluateSettings(**{k: settings[k] for k in ("models", "data", "task")})
    options = {k: v for k, v in settings.items() if k not in ("models", "data", "task")}
    labels = list(core.models)
    config = EvalConfig(refs=tuple(core.models.values()), data=core.data, task=core.task,
                        report_dir=str(ctx.work_dir / "report"), **options)
    report = evaluate(config, store=ctx.store, progress=ctx.observer.message)
    failed = [f"{label} ({m.ref}): {m.error}" for label, m in zip(labels, report.models, strict=True) if not m.ok]
    if failed:
        raise SlmopsError(f"Step {ctx.step}: evaluation failed for " + "; ".join(failed) + ".",
                          "Fix the model reference or the model, then run again.")
    out: dict[str, Any] = {"report": report.report_files.get("html"), "primary_metric": report.primary_metric,
                           "baseline": labels[0], "labels": labels}
    for label, m in zip(labels, report.models, strict=True):
        perf = m.perf
        row = report.comparison.row(m.ref) if report.comparison else None
        out[label] = {
            "ref": m.store_ref or m.ref, "format": m.format, **{k: round(v, 4) for k, v in m.metrics.items()},
            "parameters": m.parameters, "size_mb": round(m.size_bytes / 2**20, 1) if m.size_bytes else None,
            "latency_p50_ms": perf.latency_p50_ms if perf else None,
            "latency_p95_ms": perf.latency_p95_ms if perf else None,
            "tokens_per_second": round(perf.tokens_per_second, 1) if perf else None,
            "memory_mb": perf.memory_delta_mb if perf else None,
            "retention_pct": row.quality_retention_pct if row else None,
            "time_reduction_pct": row.inference_time_reduction_pct if row else None,
            "memory_reduction_pct": row.memory_reduction_pct if row else None,
            "size_reduction_pct": row.size_reduction_pct if row else None,
        }
    return out


def run_gate(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    GateSettings(**settings)
    results = []
    for check in ctx.raw["checks"]:
        try:
            results.append(evaluate_check(check, ctx.lookup))
        except (KeyError, ValueError) as exc:
            raise SlmopsError(f"Gate {ctx.step!r}: cannot evaluate {check!r}: {exc.args[0]}.",
                              "Reference a numeric output of an earlier step.") from None
    outputs = {"passed": all(r.passed for r in results), "checks": [r.to_dict() for r in results]}
    for r in results:
        ctx.observer.message(f"{'pass' if r.passed else 'FAIL'}  {r.evaluated}")
    if not outputs["passed"]:
        raise GateFailed(ctx.step, [r.evaluated for r in results if not r.passed], outputs)
    return outputs


def run_register(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    from slmops.models.artifacts import copy_artifact
    from slmops.models.resolve import resolve

    s = RegisterSettings(**settings)
    validate_name(s.name)
    source = resolve(s.model, ctx.store, pull_missing=False)
    if source.record is None:
        raise SlmopsError(f"Step {ctx.step}: {s.model} is not a store model.", "Register a model from the store.")
    rec = source.record
    with ctx.store.staging("register") as stage:
        copy_artifact(rec.path, stage / "model", what=f"registering {rec.ref} as {s.name}", where=ctx.store.home)
        new = ctx.store.add(stage / "model", s.name, rec.format, parents=[rec.ref],  # type: ignore[arg-type]
                            recipe={"kind": "register", "source": rec.ref, "pipeline": ctx.pipeline},
                            metrics=rec.metrics, parameters=rec.parameters)
    for alias in s.aliases:
        new = ctx.store.set_alias(new.ref, alias)
    ctx.observer.message(f"registered {new.ref}" + (f" as {', '.join(f'{s.name}@{a}' for a in s.aliases)}"
                                                     if s.aliases else ""))
    return {"model": new.ref, "aliases": list(new.aliases), "source": rec.ref}


def run_deploy(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    s = DeploySettings(**settings)
    if s.export is None and s.serve is None:
        raise SlmopsError(f"Step {ctx.step}: nothing to deploy.", "Give `export:` (format, output) and/or `serve:`.")
    out: dict[str, Any] = {"model": s.model}
    if s.export is not None:
        from slmops.optimize.bundle import export_bundle

        folder = s.export.output or ctx.work_dir / f"bundle-{s.export.format}"
        if s.export.output is None and folder.exists():  # left by a run killed while exporting
            import shutil

            shutil.rmtree(folder)
        manifest = export_bundle(s.model, s.export.format, folder, store=ctx.store)
        out.update(bundle=str(folder.resolve()), bundle_format=s.export.format,
                   bundle_files=len(manifest.get("files", [])))
    if s.serve is not None:
        out.update(smoke_test(s.model, s.serve.prompt, s.serve.max_tokens, ctx))
    return out


def smoke_test(model: str, prompt: str, max_tokens: int, ctx: StepContext) -> dict[str, Any]:
    """Serve ``model`` on a free local port, ask one question through the official ``openai``
    client, and stop the server."""
    import time

    import openai

    from slmops.serve.app import create_app
    from slmops.serve.config import ServeConfig
    from slmops.serve.runner import BackgroundServer

    app = create_app(ctx.store, ServeConfig(models=(model,), port=0))
    with BackgroundServer(app) as server:
        ctx.observer.message(f"serving {model} at {server.url}/v1 (OpenAI-compatible); asking one question")
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        t0 = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=max_tokens, temperature=0, seed=0)
        seconds = time.perf_counter() - t0
    answer = reply.choices[0].message.content or ""
    ctx.observer.message(f"answer: {answer.strip()}")
    return {"url": server.url + "/v1", "prompt": prompt, "answer": answer.strip(),
            "served_by": reply.model, "response_ms": round(seconds * 1000, 1),
            "completion_tokens": reply.usage.completion_tokens if reply.usage else None}


def run_rollout(settings: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """A gated, staged roll-out to a fleet (the keys of `slmops rollout start`); the pipeline's
    process is the controller, so the step ends when the roll-out does."""
    from slmops.fleet import rollouts

    try:
        rec = rollouts.run(rollouts.RolloutConfig(**settings), store=ctx.store, progress=ctx.observer.message)
    except rollouts.RolloutFailed as exc:  # the outcome, with its numbers, goes into the run report
        raise GateFailed(ctx.step, [f"roll-out {exc.record.id} rolled back: {exc.record.reason}"],
                         rollouts.outputs(exc.record)) from None
    return rollouts.outputs(rec)


# -- the kinds: one entry each, settings + check + runner together ----------------------------
# To add a kind: write its settings model (a pydantic model, in kinds.py or beside the runner),
# its runner ``run_x(settings, ctx) -> outputs`` above, and one ``Kind(...)`` line here. The spec
# parser validates steps with ``Kind.problems``, the runner runs ``Kind.run``, and the pipeline's
# JSON Schema (``slmops run --schema``, docs/pipeline.schema.json) lists ``Kind.json_schema()``;
# regenerate the committed schema with ``python -m slmops.pipeline.schema > docs/pipeline.schema.json``.
KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("distill", "teacher answers the prompts (stage 1), the student trains on them (stage 2)", run_distill,
         "model, synthetic, accepted, rejected, train_loss, eval_loss, curve", check=check_distill,
         schema=distill_schema),
    Kind("finetune", "full / LoRA / QLoRA fine-tuning (the keys of `slmops finetune`)", run_finetune,
         "model, train_loss, eval_loss, perplexity, tokens_per_second, curve", check=check_finetune,
         schema=finetune_schema),
    Kind("prune", "drop the least important layers (the keys of `slmops prune`)", run_prune,
         "model, removed_layers, parameters", check=check_prune, schema=prune_schema),
    Kind("optimize", "merge, convert to ONNX GenAI or GGUF, quantize (the keys of `slmops optimize`)", run_optimize,
         "model, size_mb, size_reduction_pct, perplexity_increase_pct", check=check_optimize, schema=optimize_schema),
    Kind("evaluate", "task quality, latency, memory and size of several models on one test set", run_evaluate,
         "report, and per model label: accuracy (or the task's metrics), latency_p50_ms, latency_p95_ms, "
         "tokens_per_second, memory_mb, size_mb, parameters", check=check_evaluate, schema=evaluate_schema),
    Kind("gate", "stop the pipeline unless every check holds", run_gate, "passed, checks", GateSettings,
         check=check_gate),
    Kind("register", "publish a model under a name with aliases", run_register, "model, aliases", RegisterSettings),
    Kind("deploy", "export a bundle and/or smoke-test the model behind the OpenAI-compatible server", run_deploy,
         "model, bundle, url, answer", DeploySettings),
    Kind("rollout", "staged roll-out to a fleet, gated on device telemetry, rolled back when it fails "
         "(the keys of `slmops rollout start`)", run_rollout,
         "rollout, status, digest, devices, touched, waves_passed, last_gate, wave_values, baseline_values",
         check=lambda s: _rollout_problems(s), schema=lambda: _rollout_schema()),
]}
RUNNERS = {name: kind.run for name, kind in KINDS.items()}


def _rollout_problems(values: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    from slmops.fleet.rollouts import RolloutConfig
    from slmops.pipeline.kinds import pydantic_problems

    return pydantic_problems(RolloutConfig, values)


def _rollout_schema() -> dict[str, Any]:
    from slmops.fleet.rollouts import RolloutConfig

    return RolloutConfig.model_json_schema()
