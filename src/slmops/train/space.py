"""A hyper-parameter search space, read from YAML and validated before any trial runs.

Each key is a fine-tuning setting (the same names as the config and the CLI flags)::

    lr:            {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    lora_r:        {type: int, low: 4, high: 32, step: 4}
    lora_alpha:    {type: choice, choices: [8, 16, 32]}
    packing:       [true, false]          # a bare list is a choice

Every problem (unknown setting, unknown key, bad bounds, a value the config would reject) is
reported at once, naming the file and the setting.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from slmops.errors import SlmopsError
from slmops.train.config import FinetuneConfig, make_config

# settings that define the run rather than how it trains; a search never varies them
FIXED = frozenset({"model", "data", "output", "eval_data", "eval_split", "eval_interval", "save_interval",
                   "keep_checkpoints", "patience", "resume", "report_to", "search", "trials", "sampler"})  # fmt: skip
TUNABLE = sorted(set(FinetuneConfig.model_fields) - FIXED)
_KEYS = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"},
         "choice": {"type", "choices"}}  # fmt: skip


@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial picks for this setting."""
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def samples(self) -> list[Any]:
        """Values that show whether the config accepts the whole range."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class Space:
    path: Path
    params: tuple[Param, ...]
    sha256: str


def load_space(path: Path, base: FinetuneConfig) -> Space:
    try:
        raw = path.read_bytes()
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SlmopsError(f"Cannot read the search space {path}: {exc}", "Give a YAML mapping of settings.") from exc
    if not isinstance(loaded, dict) or not loaded:
        raise SlmopsError(
            f"The search space {path} must be a non-empty YAML mapping of settings.",
            "Example: `lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}`.",
        )
    problems: list[str] = []
    params = []
    for key, spec in loaded.items():
        name = str(key).replace("-", "_")
        if name not in FinetuneConfig.model_fields or name in FIXED:
            close = difflib.get_close_matches(name, TUNABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (tunable: {', '.join(TUNABLE)})"
            problems.append(f"{key}: not a setting a search can vary{hint}")
            continue
        param, errors = _param(name, spec)
        problems += [f"{key}: {e}" for e in errors]
        if param is not None:
            problems += [f"{key}: {e}" for e in _rejected(param, base)]
            params.append(param)
    if problems:
        raise SlmopsError(
            f"The search space {path} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems),
            "Each setting is {type: int|float, low, high[, log, step]} or {type: choice, choices: [...]} or a list.",
        )
    return Space(path, tuple(params), hashlib.sha256(raw).hexdigest())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # YAML reads 1e-5 (no dot) as a string
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _param(name: str, spec: Any) -> tuple[Param | None, list[str]]:
    if isinstance(spec, list):
        spec = {"type": "choice", "choices": spec}
    if not isinstance(spec, dict):
        return None, ["give {type: ..., ...} or a list of choices"]
    kind = spec.get("type")
    if kind not in _KEYS:
        return None, [f"type must be int, float or choice (got {kind!r})"]
    errors = []
    for extra in sorted(set(spec) - _KEYS[kind]):
        close = difflib.get_close_matches(str(extra), sorted(_KEYS[kind]), n=1)
        errors.append(f"unknown key {extra!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if kind == "choice":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            return None, [*errors, "choices must be a non-empty list"]
        return (None if errors else Param(name, "choice", choices=tuple(choices))), errors
    low, high, step = _number(spec.get("low")), _number(spec.get("high")), spec.get("step")
    log = spec.get("log", False)
    if low is None or high is None:
        return None, [*errors, "low and high must be numbers"]
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        errors.append("an int range needs whole-number low and high")
    if low >= high:
        errors.append(f"low ({low:g}) must be below high ({high:g})")
    if not isinstance(log, bool):
        errors.append("log must be true or false")
    elif log and low <= 0:
        errors.append("a log scale needs low > 0")
    if step is not None and (_number(step) is None or _number(step) <= 0 or log):
        errors.append("step must be a positive number, and cannot be combined with log")
    if errors:
        return None, errors
    return Param(name, kind, low, high, bool(log), _number(step) if step is not None else None), []


def _rejected(param: Param, base: FinetuneConfig) -> list[str]:
    """Values of the range the config itself would refuse (e.g. lr <= 0, lora_dropout >= 1)."""
    out = []
    for value in param.samples():
        try:
            trial_config(base, {param.name: value})
        except SlmopsError as exc:
            out.append(f"the value {value!r} is not allowed ({exc.message.split(': ', 1)[-1].rstrip('.')})")
    return out


def trial_config(base: FinetuneConfig, values: dict[str, Any]) -> FinetuneConfig:
    """The base config with one trial's values (and no search of its own)."""
    fixed = {k: v for k, v in base.model_dump(mode="json").items() if k not in ("search", "trials", "sampler")}
    return make_config(fixed | values, "search trial")
