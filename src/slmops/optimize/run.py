"""``slmops optimize``: merge an adapter, convert to ONNX GenAI or GGUF, measure, register.

Reads top to bottom: validate every option at once, resolve the source, bring it to a
Hugging Face folder (merging an adapter, dequantizing a GGUF), convert, measure size and
perplexity against the source, apply the quality gate, register with lineage. Everything is
built in staging folders, so a failure or a refused conversion leaves nothing behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from slmops.configs import CommandConfig
from slmops.errors import CheckFailed, SlmopsError
from slmops.models.artifacts import disk_errors, inspect, require_free_space, write_provenance
from slmops.models.pull import Progress, gguf_to_hf
from slmops.models.refs import name_problems, validate_name
from slmops.models.resolve import ResolvedModel, resolve
from slmops.models.store import ModelRecord, ModelStore, folder_size
from slmops.optimize import quality, task_check
from slmops.optimize.gguf_export import GGUF_QUANTS, write_gguf
from slmops.optimize.merge import merge_adapter
from slmops.optimize.onnx_export import build_onnx, check_onnx_options, default_algorithm

TARGETS = ("onnx", "gguf")


class QualityGateError(CheckFailed):
    """A conversion lost more quality than ``--max-ppl-increase`` allows under ``--strict`` (exit code 1)."""


class OptimizeConfig(CommandConfig):
    """Every option of one optimize run; CLI flag = Python argument (``--block-size`` = ``block_size``)."""

    what: ClassVar[str] = "optimize options"
    example: ClassVar[str] = "`slmops optimize --help` lists them."

    ref: str = Field(description="Source model or adapter: name, name:version, name@alias or a path.")
    to: str | None = Field(None, description="Target format: onnx (ONNX Runtime GenAI) or gguf.")
    merge: bool = Field(False, description="Merge a PEFT adapter into its base model.")
    precision: str | None = Field(None, description="ONNX weights: fp32, fp16 (cuda), int8 or int4 (default).")
    quant: str | None = Field(None, description="GGUF weights: f16, q8_0 (default), q4_0 or q4_1.")
    block_size: int = Field(32, description="int4/int8 quantization block size.")
    symmetric: bool = Field(True, description="Symmetric (int) or asymmetric (uint) ONNX quantization.")
    accuracy_level: int | None = Field(None, description="int4/int8 MatMul compute: 1 fp32, 2 fp16, 3 bf16, 4 int8.")
    algorithm: str | None = Field(None, description="int4/int8 method: k_quant_mixed (int4 default), hqq, "
                                                    "rtn_last, ...")
    device: str = Field("cpu", description="Execution provider the ONNX model is built for.")
    output: str | None = Field(None, description="Store name of the result (default: derived from the options).")
    max_ppl_increase: float | None = Field(None, description="Flag the result if perplexity rises more (percent).")
    strict: bool = Field(False, description="Refuse to register a flagged result (exits 1).")
    ppl_text: Path | None = Field(None, description="Held-out text file for perplexity (default: built-in text).")
    eval_data: str | None = Field(None, description="Test set (FILE or builtin:NAME) to compare the task metric on "
                                                    "(default: one from the lineage).")
    eval_task: str | None = Field(None, description="Task --eval-data is scored as (classification, qa, ...).")
    no_task_check: bool = Field(False, description="Perplexity only, even when the lineage names a test set.")
    keep_adapters: bool = Field(False, description="ONNX of an adapter: one base plus the adapter as a separate "
                                                   "file, not merged.")
    adapters: tuple[str, ...] = Field((), description="With keep_adapters: more adapters of the same base to keep.")

    @property
    def effective_precision(self) -> str:
        return self.precision or "int4"

    @property
    def effective_quant(self) -> str:
        return self.quant or "q8_0"

    def problems(self, source_format: str | None = None) -> list[str]:
        p: list[str] = []
        if self.to is not None and self.to not in TARGETS:
            p.append(f"--to must be one of {', '.join(TARGETS)} (got {self.to!r})")
        if self.to is None and not self.merge:
            p.append("nothing to do: pass --to onnx, --to gguf or --merge")
        if self.to != "onnx" and self.precision is not None:
            p.append("--precision applies to --to onnx (use --quant for GGUF)")
        if self.to != "onnx" and self.algorithm is not None:
            p.append("--algorithm applies to --to onnx")
        if self.to != "gguf" and self.quant is not None:
            p.append("--quant applies to --to gguf (use --precision for ONNX)")
        if self.to == "onnx":
            p += check_onnx_options(
                self.effective_precision, self.device, self.block_size, self.accuracy_level, self.algorithm
            )
        if self.to == "gguf" and self.effective_quant not in GGUF_QUANTS:
            p.append(f"--quant must be one of {', '.join(GGUF_QUANTS)} (got {self.quant!r})")
        if self.max_ppl_increase is not None and self.max_ppl_increase < 0:
            p.append(f"--max-ppl-increase is a percentage >= 0 (got {self.max_ppl_increase})")
        if self.eval_task is not None and self.eval_data is None:
            p.append("--eval-task applies to --eval-data")
        if self.no_task_check and self.eval_data is not None:
            p.append("--no-task-check contradicts --eval-data")
        if self.keep_adapters and self.to != "onnx":
            p.append("--keep-adapters applies to --to onnx (GGUF and --merge fold the adapter in)")
        if self.keep_adapters and source_format not in (None, "peft-adapter"):
            p.append(f"--keep-adapters needs a PEFT adapter as the source, and it is a {source_format} model")
        if self.adapters and not self.keep_adapters:
            p.append("--adapter (more adapters to keep) needs --keep-adapters")
        if self.strict and self.max_ppl_increase is None:
            p.append("--strict needs --max-ppl-increase (the limit it enforces)")
        p += name_problems(self.output)
        if source_format == "onnx-genai":
            p.append("the source is already an ONNX GenAI model; optimize its Hugging Face or adapter source instead")
        if self.merge and source_format not in (None, "peft-adapter"):
            p.append(f"--merge needs a PEFT adapter, and the source is a {source_format} model")
        return p

    def suffix(self) -> str:
        if self.to == "onnx":
            parts = ["onnx", self.effective_precision]
            if self.effective_precision in ("int4", "int8"):
                parts += [f"b{self.block_size}"] if self.block_size != 32 else []
                parts += [] if self.symmetric else ["asym"]
            parts += ["adapters"] if self.keep_adapters else []
            return "-".join(parts + (["cuda"] if self.device == "cuda" else []))
        return f"gguf-{self.effective_quant}" if self.to == "gguf" else "merged"


@dataclass(frozen=True)
class OptimizeResult:
    source: str
    record: ModelRecord
    quality: quality.Quality
    recipe: dict[str, Any]

    @property
    def flagged(self) -> bool:
        return self.quality.flagged

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "record": self.record.to_dict(),
            "quality": self.quality.to_dict(),
            "flagged": self.flagged,
        }


def _check(config: OptimizeConfig, source_format: str | None = None) -> None:
    problems = config.problems(source_format)
    if problems:
        raise config._error(problems)


def default_output(source: ResolvedModel, config: OptimizeConfig) -> str:
    base = source.record.name if source.record else re.sub(r"[^a-z0-9._-]+", "-", source.path.stem.lower())
    base = base.strip("-._") or "model"
    suffix = config.suffix()
    return validate_name(f"{base[: 99 - len(suffix)]}-{suffix}")


def _hf_dir(model: ResolvedModel, work: Path, say: Progress) -> Path:
    """A Hugging Face folder with ``model``'s weights (a GGUF is dequantized into ``work``)."""
    if model.format == "gguf":
        say(f"dequantizing {model.label} to float32 for conversion")
        gguf_to_hf(Path(model.load_dir) / str(model.gguf_file), work / "hf")
        return work / "hf"
    return model.path


def _adapter_base(source: ResolvedModel, store: ModelStore) -> ResolvedModel:
    base_ref = source.record.base if source.record else None
    if base_ref is None:
        raise SlmopsError(
            f"{source.label} is a PEFT adapter without a known base model.",
            "Import it into the store with its base: `slmops models import PATH --name NAME --base BASE`.",
        )
    base = resolve(base_ref, store)
    if base.format not in ("hf", "gguf"):
        raise SlmopsError(f"The base of {source.label} ({base.label}) is a {base.format} artifact, not a model.")
    return base


def _kept_adapters(source: ResolvedModel, refs: tuple[str, ...], store: ModelStore) -> dict[str, Path]:
    """Name -> PEFT folder of the source adapter and every ``--adapter``, all on the source's base."""
    kept = {source.record.name if source.record else source.path.name: source.path}
    for ref in refs:
        other = resolve(ref, store)
        if other.format != "peft-adapter" or other.record is None or other.record.base != source.record.base:
            raise SlmopsError(
                f"--adapter {ref}: not a stored PEFT adapter of {source.record.base if source.record else 'the base'}.",
                "Kept adapters must share the source adapter's base model.",
            )
        if other.record.name in kept:
            raise SlmopsError(f"--adapter {ref}: an adapter named {other.record.name!r} is already kept.")
        kept[other.record.name] = other.path
    return kept


def _source_hf(
    source: ResolvedModel, store: ModelStore, work: Path, say: Progress, *, keep_adapters: bool = False
) -> tuple[Path, ResolvedModel | None]:
    """A Hugging Face folder holding the source's weights, and the adapter's base (if any); with
    ``keep_adapters`` an adapter's base folder itself (the adapter is not merged)."""
    if source.format in ("hf", "gguf"):
        return _hf_dir(source, work, say), None
    base = _adapter_base(source, store)
    if keep_adapters:
        return _hf_dir(base, work, say), base
    say(f"merging adapter {source.label} into {base.label}")
    merge_adapter(source.path, base.load_dir, work / "merged", base_gguf=base.gguf_file)
    return work / "merged", base


def _convert(
    config: OptimizeConfig, hf_dir: Path, out: Path, name: str, say: Progress, kept: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Write the target artifact into ``out``; returns what the converter reports."""
    if config.to == "onnx":
        say(f"building ONNX GenAI {config.effective_precision} for {config.device} (onnxruntime-genai model builder)")
        if kept:
            from slmops.optimize.onnx_adapters import keep_adapters

            default, first = next(iter(kept.items()))
            details = build_onnx(
                hf_dir, out, precision=config.effective_precision, device=config.device,
                block_size=config.block_size, symmetric=config.symmetric, accuracy_level=config.accuracy_level,
                algorithm=config.algorithm, cache_dir=out.parent / "builder-cache", adapter=first,
            )
            say(f"writing {len(kept)} adapter file(s) beside the base: {', '.join(kept)}")
            return {**details, "adapters": keep_adapters(out, kept, default)}
        return build_onnx(
            hf_dir,
            out,
            precision=config.effective_precision,
            device=config.device,
            block_size=config.block_size,
            symmetric=config.symmetric,
            accuracy_level=config.accuracy_level,
            algorithm=config.algorithm,
            cache_dir=out.parent / "builder-cache",
        )
    if config.to == "gguf":
        say(f"writing GGUF {config.effective_quant}")
        out.mkdir(parents=True, exist_ok=True)
        return write_gguf(hf_dir, out / f"{name}.gguf", config.effective_quant, name=name)
    from slmops.models.artifacts import copy_artifact

    copy_artifact(hf_dir, out, what="saving the merged model", where=out.parent)
    return {}


def optimize(
    config: OptimizeConfig, *, store: ModelStore | None = None, progress: Progress | None = None
) -> OptimizeResult:
    """Optimize ``config.ref`` as ``config`` says and register the result."""
    say = progress or (lambda _msg: None)
    _check(config)
    text, text_label = quality.read_text(config.ppl_text)
    explicit = task_check.explicit(config.eval_data, config.eval_task) if config.eval_data else None
    store = store or ModelStore()
    source = resolve(config.ref, store, progress=progress)
    _check(config, source.format)
    check = explicit or (None if config.no_task_check else task_check.from_lineage(source.record, store))
    name = config.output or default_output(source, config)
    source_size = folder_size(source.path)
    require_free_space(store.home, 3 * source_size + 2**20, f"optimizing {source.label}")
    with (
        store.staging("optimize-work") as work,
        store.staging("optimize") as stage,
        disk_errors(f"optimizing {source.label}", store.home),
    ):
        hf_dir, base = _source_hf(source, store, work, say, keep_adapters=config.keep_adapters)
        if base is not None:
            source_size += folder_size(base.path)
        kept = _kept_adapters(source, config.adapters, store) if config.keep_adapters else None
        details = _convert(config, hf_dir, stage / "model", name, say, kept)
        fmt, params = inspect(stage / "model")
        say("measuring perplexity on held-out text: source, then result")
        if base is not None and (config.to is None or config.keep_adapters):  # against base + adapter
            src_ppl, _ = quality.score(
                source.path, "peft-adapter", text, base_dir=base.load_dir, base_gguf=base.gguf_file
            )
        else:
            src_ppl, _ = quality.score(hf_dir, "hf", text)
        ppl, tokens = quality.score(stage / "model", fmt, text)
        task = None
        if check is not None:
            source_ref = source.record.ref if source.record else str(source.path)
            task = task_check.measure(check, source_ref, stage / "model", store, say)
        q = quality.Quality(
            source_size, folder_size(stage / "model"), src_ppl, ppl, tokens, text_label, config.max_ppl_increase,
            task=task,
        )
        if q.flagged and config.strict:
            raise QualityGateError(
                f"Not registered: perplexity rose {q.perplexity_increase_pct:.2f}% ({src_ppl:.3f} -> {ppl:.3f}), "
                f"more than --max-ppl-increase {config.max_ppl_increase}%.",
                "Use a higher precision (e.g. int8 or q8_0), a smaller --block-size, or raise the limit.",
            )
        parents = [source.record.ref] if source.record else []
        parents += [resolve(r, store).label for r in config.adapters]
        recipe = {"kind": "optimize", "source": source.label, **_json_options(config), **details}
        write_provenance(
            stage / "model",
            {"name": name, "format": fmt, "parents": parents, "recipe": recipe, "metrics": {"optimize": q.to_dict()}},
        )
        say(f"registering {name}")
        record = store.add(
            stage / "model",
            name,
            fmt,
            parents=parents,
            recipe=recipe,
            metrics={"optimize": q.to_dict()},
            # a conversion keeps the parameter count of what it converted (ONNX folders do not say)
            parameters=params or (base.record.parameters if base is not None and base.record else None)
            or (source.record.parameters if source.record and source.format != "peft-adapter" else None),
        )
    return OptimizeResult(source.label, record, q, recipe)


def _json_options(config: OptimizeConfig) -> dict[str, Any]:
    data = config.model_dump(exclude={"ref"})  # the recipe names the resolved source itself
    data["precision"] = config.effective_precision if config.to == "onnx" else None
    data["quant"] = config.effective_quant if config.to == "gguf" else None
    data["algorithm"] = (
        (config.algorithm or default_algorithm(config.effective_precision)) if config.to == "onnx" else None
    )
    data["ppl_text"] = str(config.ppl_text) if config.ppl_text else None
    return data
