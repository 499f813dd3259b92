"""Step kinds: what each accepts (checked when the file loads) and which function runs it.

A kind's settings are the keys of the library config it calls, so a pipeline step reads like
the command line it replaces: ``kind: finetune`` takes :class:`~slmops.train.FinetuneConfig`'s
keys, ``kind: optimize`` takes :class:`~slmops.optimize.run.OptimizeConfig`'s, and so on.
The runners live in :mod:`slmops.pipeline.steps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from slmops.checks import parse_check

Problems = list[tuple[tuple[Any, ...], str]]


def _has_ref(values: Any, loc: tuple[Any, ...]) -> bool:
    """True when the value at ``loc`` (or on the way to it) is a not-yet-resolved ``${steps...}``."""
    for key in loc:
        if isinstance(values, str):
            break
        try:
            values = values[key]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(values, str) and "${steps." in values


def _got(value: Any) -> str:
    return f" (got {value!r})" if isinstance(value, str | int | float | bool) and len(repr(value)) < 60 else ""


def pydantic_problems(model: type[BaseModel], values: dict[str, Any], fill: dict[str, Any] | None = None) -> Problems:
    """Validate ``values`` against ``model`` (``fill`` supplies keys the pipeline sets itself)."""
    try:
        model(**{**(fill or {}), **values})
    except ValidationError as exc:
        out: Problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if _has_ref(values, loc):
                continue
            out.append((loc[:1] if loc and isinstance(loc[-1], int) and len(loc) > 1 else loc,
                        e["msg"].removeprefix("Value error, ") + _got(e.get("input"))))
        return out
    return []


def dataclass_problems(cls: type, values: dict[str, Any], fill: dict[str, Any] | None = None,
                       hidden: tuple[str, ...] = ()) -> Problems:
    """Unknown keys and wrong types for a dataclass config (``hidden``: fields set by the pipeline)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in hidden]
    out: Problems = [((k,), f"unknown key; {cls.__name__} takes: {', '.join(names)}") for k in values if k not in names]
    known = {k: v for k, v in values.items() if k in names and not _has_ref(values, (k,))}
    try:
        TypeAdapter(cls).validate_python({**(fill or {}), **known})
    except ValidationError as exc:
        out += [(tuple(e["loc"][:1]), e["msg"] + _got(e.get("input"))) for e in exc.errors()]
    return out


# -- the settings of the kinds the pipeline defines itself ---------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillSettings(_Strict):
    teacher: str = Field(description="Teacher model (store name, catalog name, path, or URL#model).")
    student: str = Field(description="Student model to train on the teacher's answers.")
    output: str | None = Field(None, description="Store name of the distilled student (default: PIPELINE-STEP).")
    generate: dict[str, Any] = Field(description="`distill generate` settings: data, task, labels, few_shot, ...")
    train: dict[str, Any] = Field(default_factory=dict, description="`finetune` settings: method, max_steps, lr, ...")


class EvaluateSettings(_Strict):
    models: dict[str, str] = Field(min_length=1, description="Label -> model; the first is the baseline.")
    data: str
    task: str


class GateSettings(_Strict):
    checks: list[str] = Field(min_length=1, description='Comparisons, e.g. "${steps.eval.student.accuracy} >= 0.9"')


class RegisterSettings(_Strict):
    model: str
    name: str
    aliases: list[str] = Field(default_factory=list)


class ExportSettings(_Strict):
    format: str
    output: Path | None = Field(None, description="Bundle folder (must not exist; default: in the step's work folder).")


class ServeSettings(_Strict):
    prompt: str = "Hello! What can you do?"
    max_tokens: int = Field(32, ge=1)


class DeploySettings(_Strict):
    model: str
    export: ExportSettings | None = None
    serve: ServeSettings | None = None


def _check_finetune(s: dict[str, Any]) -> Problems:
    from slmops.train.config import FinetuneConfig

    return pydantic_problems(FinetuneConfig, normalize_finetune(s), {"output": "x"})


def normalize_finetune(s: dict[str, Any]) -> dict[str, Any]:
    """``data: file`` may be one path; the config takes a list."""
    return {**s, "data": [s["data"]]} if isinstance(s.get("data"), str) else dict(s)


def _check_distill(s: dict[str, Any]) -> Problems:
    from slmops.distill.config import GenerateConfig
    from slmops.train.config import FinetuneConfig

    out = pydantic_problems(DistillSettings, s)
    gen, train = s.get("generate"), s.get("train") or {}
    if isinstance(gen, dict):
        bad = [k for k in ("teacher", "output", "resume") if k in gen]
        out += [(("generate", k), "set by the step (teacher at the step's top level)") for k in bad]
        gen = {k: v for k, v in gen.items() if k not in bad}
        out += [(("generate", *loc), m) for loc, m in
                pydantic_problems(GenerateConfig, gen, {"teacher": "t", "output": Path("synthetic.jsonl")})]
    if isinstance(train, dict):
        bad = [k for k in ("model", "data", "output", "resume") if k in train]
        out += [(("train", k), "set by the step (student and output at the step's top level)") for k in bad]
        train = {k: v for k, v in train.items() if k not in bad}
        out += [(("train", *loc), m) for loc, m in
                pydantic_problems(FinetuneConfig, train, {"model": "m", "data": [Path("x")], "output": "x"})]
    return out


def _check_prune(s: dict[str, Any]) -> Problems:
    from slmops.optimize.prune import PruneConfig

    out: Problems = [] if isinstance(s.get("model"), str) else [(("model",), "the model to prune is required")]
    return out + dataclass_problems(PruneConfig, {k: v for k, v in s.items() if k != "model"}, {"ref": "m"},
                                    hidden=("ref",))


def _check_optimize(s: dict[str, Any]) -> Problems:
    from slmops.optimize.run import OptimizeConfig

    out: Problems = [] if isinstance(s.get("model"), str) else [(("model",), "the model to optimize is required")]
    options = {k: v for k, v in s.items() if k != "model"}
    out += dataclass_problems(OptimizeConfig, options)
    if not out:
        out += [((), p) for p in OptimizeConfig(**options).problems()]
    return out


def _check_evaluate(s: dict[str, Any]) -> Problems:
    from slmops.evaluate.run import EvalConfig

    core = {k: s[k] for k in ("models", "data", "task") if k in s}
    out = pydantic_problems(EvaluateSettings, core)
    options = {k: v for k, v in s.items() if k not in core}
    return out + dataclass_problems(EvalConfig, options, {"refs": ("m",), "data": "d", "task": "t"},
                                    hidden=("refs", "data", "task", "report_dir", "record"))


def _check_gate(s: dict[str, Any]) -> Problems:
    out = pydantic_problems(GateSettings, s)
    for i, check in enumerate(s.get("checks") or []):
        if isinstance(check, str):
            try:
                parse_check(check, placeholder=1.0)
            except ValueError as exc:
                out.append((("checks", i), str(exc)))
    return out


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    check: Callable[[dict[str, Any]], Problems]
    outputs: str


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("distill", "teacher answers the prompts (stage 1), the student trains on them (stage 2)", _check_distill,
         "model, synthetic, accepted, rejected, train_loss, eval_loss, curve"),
    Kind("finetune", "full / LoRA / QLoRA fine-tuning (the keys of `slmops finetune`)", _check_finetune,
         "model, train_loss, eval_loss, perplexity, tokens_per_second, curve"),
    Kind("prune", "drop the least important layers (the keys of `slmops prune`)", _check_prune,
         "model, removed_layers, parameters"),
    Kind("optimize", "merge, convert to ONNX GenAI or GGUF, quantize (the keys of `slmops optimize`)",
         _check_optimize, "model, size_mb, size_reduction_pct, perplexity_increase_pct"),
    Kind("evaluate", "task quality, latency, memory and size of several models on one test set", _check_evaluate,
         "report, and per model label: accuracy (or the task's metrics), latency_p50_ms, latency_p95_ms, "
         "tokens_per_second, memory_mb, size_mb, parameters"),
    Kind("gate", "stop the pipeline unless every check holds", _check_gate, "passed, checks"),
    Kind("register", "publish a model under a name with aliases", lambda s: pydantic_problems(RegisterSettings, s),
         "model, aliases"),
    Kind("deploy", "export a bundle and/or smoke-test the model behind the OpenAI-compatible server",
         lambda s: pydantic_problems(DeploySettings, s), "model, bundle, url, answer"),
]}
