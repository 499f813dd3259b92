"""``slmops distill run``: the whole distillation in one call, then the numbers that justify it.

Reads top to bottom: validate the options; derive the student by pruning the teacher when asked
(:func:`slmops.optimize.prune.prune`, calibrated on the training prompts); stage 1, the teacher
answers the training prompts (resumable: a rerun reuses every answer already saved); stage 2, the student learns the
accepted answers (both stages: :func:`slmops.distill.stages.generate_then_train`, which the
pipeline's ``distill`` step calls too); then the teacher, the un-distilled student and the
distilled student are evaluated on the held-out test split
(:func:`slmops.distill.report.distill_report`, which writes the Markdown/JSON/HTML reports).
Each step is the library function the single commands call, so a pipeline can call them alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmops.distill.config import make_generate_config
from slmops.distill.generate import GenerateResult
from slmops.distill.report import DistillReport, distill_report
from slmops.distill.stages import generate_then_train
from slmops.distill.train import DistillTrainResult
from slmops.errors import SlmopsError
from slmops.evaluate.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX, resolve_data
from slmops.evaluate.run import EvalConfig, default_report_dir
from slmops.models.refs import name_problems
from slmops.models.store import ModelStore
from slmops.optimize.prune import PruneConfig, PruneResult, parse_keep, prune

DEMO_TASK = "support-language"

# stage name -> that stage's own event (str for prune/evaluate, GenerateEvent, TrainEvent)
Progress = Callable[[str, Any], None]


@dataclass(frozen=True)
class DistillRunConfig:
    """Every option of ``slmops distill run``; CLI flag = field = Python argument.

    The defaults run the built-in demo: the teacher ``smollm2-135m-instruct`` on the built-in
    support-intent task, the student made by pruning the teacher to ``student_layers``.
    """

    teacher: str = "smollm2-135m-instruct"
    data: str = f"builtin:{DEMO_TASK}-train"
    test: str = f"builtin:{DEMO_TASK}-test"
    task: str = "classification"
    labels: str | None = None
    student: str | None = None  # a model reference; or derive one from the teacher:
    student_layers: str | None = "10"  # prune the teacher to N layers (or a fraction)
    output: str | None = None  # store name of the distilled student
    few_shot: int = 0  # teacher-side few-shot examples from the training data
    method: str = "full"
    max_steps: int = 30  # 4 packed rows of 512 tokens a step: about 3 passes over 225 answers
    lr: float = 1e-4
    batch_size: int = 4
    train_options: dict[str, Any] = field(default_factory=dict)  # any other FinetuneConfig field
    limit: int | None = None  # training prompts used
    test_limit: int | None = None
    latency_samples: int = 5
    threads: int | None = None
    report_dir: Path | None = None

    def problems(self) -> list[str]:
        p: list[str] = []
        if (self.student is None) == (self.student_layers is None):
            p.append("give the student either as a model reference (--student) or as a layer count to prune the "
                     "teacher to (--student-layers), not both")
        if self.student_layers is not None:
            try:
                parse_keep(self.student_layers)
            except SlmopsError as exc:
                p.append(exc.message.replace("--keep-layers", "--student-layers"))
        if self.student is not None and self.student == self.teacher:
            p.append("the student must be a different model from the teacher")
        for name in ("max_steps", "batch_size", "limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                p.append(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        p += name_problems(self.output)
        return p


@dataclass(frozen=True)
class DistillRunResult:
    teacher: str
    student: str  # the un-distilled student
    distilled: str
    pruned: PruneResult | None
    generate: GenerateResult
    train: DistillTrainResult
    report: DistillReport
    timings: dict[str, float]  # seconds per stage
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher, "student": self.student, "distilled": self.distilled,
            "pruned": self.pruned.to_dict() if self.pruned else None, "generate": self.generate.to_dict(),
            "train": self.train.to_dict(), "report": self.report.to_dict(),
            "timings": {k: round(v, 2) for k, v in self.timings.items()}, "settings": self.settings,
        }


def run_distill(
    config: DistillRunConfig, *, store: ModelStore | None = None, progress: Progress | None = None
) -> DistillRunResult:
    """Prune (optional), generate, train, evaluate; see the module docstring."""
    notify = progress or (lambda stage, event: None)
    problems = config.problems()
    if problems:
        raise SlmopsError("Invalid distill run options: " + "; ".join(problems) + ".",
                          "`slmops distill run --help` lists them.")
    resolve_data(config.data)  # a missing file or unknown builtin fails before any model loads
    test_path, test_name = resolve_data(config.test)
    if not test_path.is_file():
        raise SlmopsError(f"Test data file {test_path} does not exist.", "Give --test FILE or builtin:NAME.")
    store = store or ModelStore()
    timings: dict[str, float] = {}
    # a built-in task's declared label order (a small teacher leans to the first label listed, so
    # the order inferred from whichever record comes first would change its answers)
    labels = config.labels or builtin_labels(config.test) or builtin_labels(config.data)

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[stage] = time.perf_counter() - t0
        return result

    pruned: PruneResult | None = None
    student = config.student
    if config.student_layers is not None:
        # calibrated on prune's built-in general text, not the task prompts: on the built-in task the
        # student pruned by task-prompt influence kept 87.5% of the teacher's accuracy after distillation,
        # the one pruned by general-text influence 117% (same 30 steps; bench/RESULTS.md, demo)
        prune_config = PruneConfig(config.teacher, config.student_layers,
                                   threads=config.threads)  # registered as <teacher>-pruned-<N>l
        pruned = timed("prune", lambda: prune(prune_config, store=store, progress=lambda m: notify("prune", m)))
        student = pruned.record.ref
    assert student is not None
    output = config.output or f"{_name(config.teacher)[:90]}-distilled"

    run_dir = store.home / "runs" / f"distill-run-{_name(config.teacher)}-{_name(config.data)}"
    gen_config = make_generate_config(
        teacher=config.teacher, data=config.data, task=config.task, labels=labels,
        output=run_dir / "synthetic.jsonl", few_shot=config.few_shot, batch_size=16, threads=config.threads,
        limit=config.limit, resume=True,
    )
    train_options = {"method": config.method, "max_steps": config.max_steps, "lr": config.lr,
                     "batch_size": config.batch_size, **config.train_options}
    two = generate_then_train(gen_config, student, output, train_options=train_options, store=store,
                              on_generate=lambda e: notify("generate", e), on_train=lambda e: notify("train", e))
    generated, trained = two.generate, two.train
    timings.update(generate=two.generate_seconds, train=two.train_seconds)
    distilled = trained.record.ref
    eval_config = EvalConfig(
        (config.teacher, student, distilled), config.test, config.task, labels=labels, limit=config.test_limit,
        latency_samples=config.latency_samples, threads=config.threads,
        report_dir=config.report_dir or default_report_dir(store, config.task, test_name),
    )
    report = timed("evaluate", lambda: distill_report(eval_config, store=store,
                                                      progress=lambda m: notify("evaluate", m)))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return DistillRunResult(config.teacher, student, distilled, pruned, generated, trained, report, timings, settings)


def builtin_labels(data: str) -> str | None:
    """The label set a built-in dataset declares (comma-separated), or None."""
    name = data[len(BUILTIN_PREFIX):] if data.startswith(BUILTIN_PREFIX) else None
    dataset = BUILTIN_DATASETS.get(name) if name else None
    return ",".join(dataset.labels) if dataset and dataset.labels else None


def _name(ref: str) -> str:
    """A store-name-safe stem of a model reference or data source."""
    import re

    stem = re.sub(r"^builtin:", "", str(ref)).rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"
