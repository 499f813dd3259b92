"""The typed config of ``slmops distill generate``: CLI flag = field = Python argument.

Every problem (a bad value, flags that do not go together) is reported in one error before
any record is read or any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmops.distill.recipes import LABEL_TASKS
from slmops.errors import SlmopsError
from slmops.evaluate.tasks import TASKS

Task = Literal["classification", "nli", "qa", "conversation", "math", "summarization"]


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str = Field(
        description="Teacher: store name, catalog name, path, or an OpenAI-compatible URL#model "
        "(several URLs, comma-separated, share the work)."
    )
    data: str = Field(description="Input records (JSONL/JSON/CSV/Parquet) or builtin:NAME.")
    task: Task = Field(description="Task type: classification, nli, qa, conversation, math, summarization.")
    output: Path = Field(description="Synthetic data file (JSONL, appended to); rejects go to <stem>.rejected.jsonl.")
    input_field: str = Field("prompt", description="Field holding the input text (records with 'messages' use those).")
    target_field: str = Field("answer", description="Field holding a gold answer (few-shot examples, label set).")
    labels: list[str] = Field(default_factory=list, description="Label set (classification/NLI), comma-separated.")
    n: int = Field(1, ge=1, description="Samples per input.")
    temperature: float = Field(0.0, ge=0, description="Teacher sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens per teacher answer (default: per task).")
    batch_size: int = Field(8, ge=1, description="Teacher requests per batch (one durable append per batch).")
    concurrency: int = Field(
        8, ge=1, description="Remote teacher: requests in flight at once, per endpoint (<= --batch-size)."
    )
    rps: float | None = Field(None, gt=0, description="Remote teacher: most requests started per second.")
    resume: bool = Field(False, description="Continue an interrupted run: finished records are skipped.")
    system: str | None = Field(None, description="System prompt for the teacher (overrides the recipe's).")
    few_shot: int = Field(0, ge=0, description="Few-shot examples taken from records with a gold answer.")
    cot: bool = Field(False, description="Math: ask for step-by-step reasoning; the student learns it too.")
    recipe: Path | None = Field(None, description="YAML/JSON file overriding the prompt recipe's keys.")
    regex: str | None = Field(None, description="Reject teacher answers that do not match this regular expression.")
    json_schema: Path | None = Field(
        None, description="Teacher answers are JSON valid against this schema (constrained; still checked)."
    )
    vote: bool = Field(False, description="Keep an answer only when most of the --n samples agree on it.")
    seed: int = Field(0, description="Seed for sampling (each sample's seed also depends on its key).")
    threads: int | None = Field(None, ge=1, description="CPU threads for a local teacher.")
    limit: int | None = Field(None, ge=1, description="Use only the first N input records.")

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        problems = []
        if self.n > 1 and self.temperature == 0:
            problems.append("--n > 1 needs --temperature > 0 (greedy decoding gives n identical answers)")
        if self.vote and self.n < 2:
            problems.append("--vote needs --n 2 or more (3 or 5 is usual)")
        parts = [p.strip() for p in self.teacher.split(",")]
        if len(parts) > 1 and not all(p.startswith(("http://", "https://")) for p in parts):
            problems.append("--teacher: several teachers (comma-separated) must all be OpenAI-compatible URLs")
        if self.cot and self.task != "math":
            problems.append("--cot is for --task math")
        if self.labels and self.task not in LABEL_TASKS:
            problems.append(f"--labels is for --task {' or '.join(LABEL_TASKS)}")
        for name in ("recipe", "json_schema"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                problems.append(f"--{name.replace('_', '-')} file {path} does not exist")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def remote(self) -> bool:
        return self.teacher.startswith(("http://", "https://"))

    def answer_tokens(self) -> int:
        if self.max_tokens is not None:
            return self.max_tokens
        if self.task == "math" and not self.cot:
            return 32
        return TASKS[self.task].max_tokens


def make_generate_config(**values: Any) -> GenerateConfig:
    """Build the config; unknown keys and bad values become one :class:`SlmopsError`."""
    if isinstance(values.get("labels"), str):
        values["labels"] = [p for p in values["labels"].split(",") if p.strip()]
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return GenerateConfig(**values)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"--{str(e['loc'][0]).replace('_', '-')}: {msg}" if e["loc"] else msg)
        raise SlmopsError("Invalid distill generate settings: " + "; ".join(problems) + ".",
                          "See `slmops distill generate --help`.") from None
