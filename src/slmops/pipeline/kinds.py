"""Step kinds' settings: what each accepts (checked when the file loads) and its JSON Schema.

A kind's settings are the keys of the library config it calls, so a pipeline step reads like
the command line it replaces: ``kind: finetune`` takes :class:`~slmops.train.FinetuneConfig`'s
keys, ``kind: optimize`` takes :class:`~slmops.optimize.run.OptimizeConfig`'s, and so on.
The registry of kinds (:data:`slmops.pipeline.steps.KINDS`: settings, check and runner of each
kind together) is in :mod:`slmops.pipeline.steps`, beside the runners.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from slmops.checks import parse_check
from slmops.configs import CommandConfig

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
        data = {**(fill or {}), **values}
        built = model.validate_raw(data) if issubclass(model, CommandConfig) else model(**data)
    except ValidationError as exc:
        out: Problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if _has_ref(values, loc):
                continue
            out.append((loc[:1] if loc and isinstance(loc[-1], int) and len(loc) > 1 else loc,
                        e["msg"].removeprefix("Value error, ") + _got(e.get("input"))))
        return out
    cross = getattr(built, "problems", None)  # a CommandConfig's cross-field rules
    if callable(cross) and "${steps." not in repr(values):
        return [((), p) for p in cross()]
    return []


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


def check_finetune(s: dict[str, Any]) -> Problems:
    from slmops.train.config import FinetuneConfig

    return pydantic_problems(FinetuneConfig, normalize_finetune(s), {"output": "x"})


def normalize_finetune(s: dict[str, Any]) -> dict[str, Any]:
    """``data: file`` may be one path; the config takes a list."""
    return {**s, "data": [s["data"]]} if isinstance(s.get("data"), str) else dict(s)


def check_distill(s: dict[str, Any]) -> Problems:
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


def check_prune(s: dict[str, Any]) -> Problems:
    from slmops.optimize.prune import PruneConfig

    out: Problems = [] if isinstance(s.get("model"), str) else [(("model",), "the model to prune is required")]
    return out + pydantic_problems(PruneConfig, {k: v for k, v in s.items() if k != "model"}, {"ref": "m"})


def check_optimize(s: dict[str, Any]) -> Problems:
    from slmops.optimize.run import OptimizeConfig

    out: Problems = [] if isinstance(s.get("model"), str) else [(("model",), "the model to optimize is required")]
    return out + pydantic_problems(OptimizeConfig, {k: v for k, v in s.items() if k != "model"}, {"ref": "m"})


def check_evaluate(s: dict[str, Any]) -> Problems:
    from slmops.evaluate.run import EvalConfig

    core = {k: s[k] for k in ("models", "data", "task") if k in s}
    out = pydantic_problems(EvaluateSettings, core)
    options = {k: v for k, v in s.items() if k not in core}
    hidden = ("refs", "report_dir", "record")  # set by the pipeline (refs from models)
    out += [((k,), "set by the pipeline, not a step setting") for k in options if k in hidden]
    options = {k: v for k, v in options.items() if k not in hidden}
    return out + pydantic_problems(EvalConfig, options, {"refs": ("m",), "data": "d", "task": "t"})


def check_gate(s: dict[str, Any]) -> Problems:
    out = pydantic_problems(GateSettings, s)
    for i, check in enumerate(s.get("checks") or []):
        if isinstance(check, str):
            try:
                parse_check(check, placeholder=1.0)
            except ValueError as exc:
                out.append((("checks", i), str(exc)))
    return out


# -- JSON Schema of each kind's settings (for `slmops run --schema`) ---------------------------
def _schema_of(model: Any) -> dict[str, Any]:
    """A pydantic model's or a dataclass's JSON Schema (``$defs`` kept; hoisted by the caller)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    return TypeAdapter(model).json_schema()


def _without(schema: dict[str, Any], *fields: str, extra: dict[str, Any] | None = None,
             required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``schema`` less ``fields`` (set by the pipeline), plus ``extra`` properties; no extra keys."""
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in fields}
    out = {**schema, "type": "object", "properties": {**(extra or {}), **props}, "additionalProperties": False}
    req = [r for r in schema.get("required", []) if r not in fields] + list(required)
    if req:
        out["required"] = req
    else:
        out.pop("required", None)
    return out


_MODEL_KEY = {"model": {"type": "string", "description": "The source model (store reference or ${steps.X.model})."}}


def finetune_schema() -> dict[str, Any]:
    from slmops.train.config import FinetuneConfig

    schema = _without(_schema_of(FinetuneConfig), "output", "resume")
    data = schema["properties"].get("data", {})
    schema["properties"]["data"] = {"anyOf": [{"type": "string"}, data], "description": data.get("description")}
    schema["properties"]["output"] = {"type": "string", "description": "Store name (default: PIPELINE-STEP)."}
    return schema


def distill_schema() -> dict[str, Any]:
    from slmops.distill.config import GenerateConfig
    from slmops.train.config import FinetuneConfig

    schema = _without(_schema_of(DistillSettings))
    schema["properties"]["generate"] = {**_without(_schema_of(GenerateConfig), "teacher", "output", "resume"),
                                        "description": DistillSettings.model_fields["generate"].description}
    schema["properties"]["train"] = {**_without(_schema_of(FinetuneConfig), "model", "data", "output", "resume"),
                                     "description": DistillSettings.model_fields["train"].description}
    return schema


def prune_schema() -> dict[str, Any]:
    from slmops.optimize.prune import PruneConfig

    return _without(_schema_of(PruneConfig), "ref", extra=_MODEL_KEY, required=("model",))


def optimize_schema() -> dict[str, Any]:
    from slmops.optimize.run import OptimizeConfig

    return _without(_schema_of(OptimizeConfig), "ref", extra=_MODEL_KEY, required=("model",))


def evaluate_schema() -> dict[str, Any]:
    from slmops.evaluate.run import EvalConfig

    core = _schema_of(EvaluateSettings)
    schema = _without(_schema_of(EvalConfig), "refs", "data", "task", "report_dir", "record",
                      extra=core["properties"], required=tuple(core.get("required", ())))
    return schema


Runner = Callable[[dict[str, Any], Any], dict[str, Any]]  # (resolved settings, StepContext) -> outputs


@dataclass(frozen=True)
class Kind:
    """One step kind, whole: what it accepts, how it is checked, and what runs it.

    ``settings`` (a pydantic model) checks a step's keys when the file loads and gives the
    JSON Schema, unless ``check`` / ``schema`` say otherwise (kinds whose keys are a library
    config's, validated with that config). ``run(settings, ctx)`` does the work and returns the
    step's outputs (a flat dict later steps read as ``${steps.NAME.key}``).
    """

    name: str
    summary: str
    run: Runner
    outputs: str
    settings: type[BaseModel] | None = None
    check: Callable[[dict[str, Any]], Problems] | None = None
    schema: Callable[[], dict[str, Any]] | None = None

    def problems(self, values: dict[str, Any]) -> Problems:
        if self.check is not None:
            return self.check(values)
        return pydantic_problems(self.settings, values) if self.settings else []

    def json_schema(self) -> dict[str, Any]:
        if self.schema is not None:
            return self.schema()
        return _without(_schema_of(self.settings)) if self.settings else {"type": "object"}
