"""The one typed config of ``slmops finetune``: CLI flag = YAML key = Python argument.

``--max-steps`` on the command line, ``max_steps:`` (or ``max-steps:``) in a ``--config``
YAML file and ``FinetuneConfig(max_steps=...)`` in Python are the same field. Unknown keys
and bad values are all reported in one error before any work starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmops.errors import SlmopsError
from slmops.train.kd import KDSettings

Method = Literal["full", "lora", "qlora"]
Reporter = Literal["mlflow", "tensorboard"]
KDLossName = Literal["forward_kl", "reverse_kl", "jsd"]
KD_FIELDS = ("kd_loss", "kd_temperature", "kd_weight", "kd_top_k")


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Base model: store name[:version|@alias], catalog name or path.")
    data: list[Path] = Field(description="Training data file(s): JSONL, JSON, CSV or Parquet.", min_length=1)
    output: str = Field(description="Store name for the result (adapter or full model).")
    method: Method = Field("lora", description="full, lora, or qlora (4-bit nf4 base + LoRA).")
    eval_data: Path | None = Field(None, description="Evaluation data file (same shapes as --data).")
    eval_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of --data held out for evaluation.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (overrides --epochs).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data when --max-steps is not set.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(512, ge=8, description="Longest sequence (and packed row) in tokens.")
    truncation: Literal["drop", "truncate", "error"] = Field(
        "error", description="What to do with examples longer than --max-seq-len: drop, truncate or error."
    )
    warmup: int = Field(0, ge=0, description="Linear warm-up steps (then linear decay to 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"], description="Modules LoRA wraps (e.g. q_proj v_proj; all-linear)."
    )
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    text_template: str | None = Field(
        None, description='Template such as "Q: {question}\\nA: {answer}"; the last {field} is the answer.'
    )
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (default: answer tokens only).")
    packing: bool = Field(True, description="Pack short examples into full rows (no attention across examples).")
    eval_interval: int = Field(50, ge=1, description="Evaluate every N steps (and at the end).")
    save_interval: int = Field(50, ge=1, description="Write a checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (the best weights are kept apart).")
    patience: int | None = Field(None, ge=1, description="Stop after N evaluations without improvement.")
    resume: bool = Field(False, description="Continue the run from its last checkpoint.")
    teacher: str | None = Field(
        None, description="Local teacher for logit-level KD (same tokenizer as --model); off when not given."
    )
    kd_loss: KDLossName = Field("forward_kl", description="KD divergence: forward_kl, reverse_kl or jsd.")
    kd_temperature: float = Field(1.0, gt=0, description="KD softmax temperature (the loss is scaled by T^2).")
    kd_weight: float = Field(0.5, ge=0, le=1, description="Share of KD in the loss: (1-w)*CE + w*KD.")
    kd_top_k: int | None = Field(None, ge=1, description="Keep only the teacher's top-k logits (default: all).")
    report_to: list[Reporter] = Field(
        default_factory=list, description="Also report metrics to: mlflow, tensorboard (comma-separated)."
    )
    search: Path | None = Field(None, description="Hyper-parameter search space (YAML); runs --trials trials.")
    trials: int = Field(10, ge=1, description="Trials of a --search; the best one is registered.")
    sampler: Literal["tpe", "random"] = Field("tpe", description="How a --search picks trials: tpe or random.")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.eval_data is not None and self.eval_split > 0:
            raise ValueError("give --eval-data or --eval-split, not both")
        if self.patience is not None and self.eval_data is None and self.eval_split == 0:
            raise ValueError("--patience needs evaluation data (--eval-data or --eval-split)")
        if self.search is not None and not self.has_eval:
            raise ValueError("--search ranks trials by eval loss: give --eval-data or --eval-split")
        if self.search is not None and self.resume:
            raise ValueError("a --search cannot be resumed; run it again without --resume")
        kd_given = [k for k in KD_FIELDS if getattr(self, k) != type(self).model_fields[k].default]
        if self.teacher is None and kd_given:
            flags = ", ".join("--" + k.replace("_", "-") for k in kd_given)
            raise ValueError(f"{flags} only apply with a --teacher (logit KD)")
        return self

    @property
    def has_eval(self) -> bool:
        return self.eval_data is not None or self.eval_split > 0

    @property
    def lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def kd(self) -> KDSettings | None:
        """The logit-KD settings when a teacher is given."""
        if self.teacher is None:
            return None
        return KDSettings(self.kd_loss, self.kd_temperature, alpha=self.kd_weight, top_k=self.kd_top_k)


# fields whose change does not alter the trajectory of a resumed run
RESUMABLE_CHANGES = frozenset({"resume", "keep_checkpoints", "save_interval", "report_to"})


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    return "--" + str(loc[0]).replace("_", "-") if loc else "config"


def make_config(values: dict[str, Any], source: str = "options") -> FinetuneConfig:
    """Build a config, turning every problem (unknown key, bad value) into one clear error."""
    fields = set(FinetuneConfig.model_fields)
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    problems = []
    for key in sorted(set(values) - fields):
        close = difflib.get_close_matches(key, sorted(fields), n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not problems:
        for key in ("data", "target_modules"):
            if isinstance(values.get(key), str | Path):
                values[key] = [values[key]]
        if isinstance(values.get("report_to"), str | list):  # "mlflow,tensorboard" or repeated flags
            items = [values["report_to"]] if isinstance(values["report_to"], str) else values["report_to"]
            values["report_to"] = [x.strip() for i in items for x in str(i).split(",") if x.strip()]
        try:
            return FinetuneConfig(**values)
        except ValidationError as exc:
            for e in exc.errors():
                msg = e["msg"].removeprefix("Value error, ")
                problems.append(f"{_fmt_loc(e['loc'])}: {msg}" if e["loc"] else msg)
    raise SlmopsError(
        f"Invalid fine-tuning config ({source}): " + "; ".join(problems) + ".",
        "See `slmops finetune --help` for every key.",
    )


def load_config(path: Path | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """YAML file values (if any), overridden by the options given on the command line."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SlmopsError(
                f"Cannot read the config file {path}: {exc}", "Give a YAML mapping of finetune keys."
            ) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SlmopsError(f"{path} must hold a YAML mapping (key: value).", "Example: `max_steps: 30`.")
        values = {str(k).replace("-", "_"): v for k, v in (loaded or {}).items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(values, str(path) if path else "options")
