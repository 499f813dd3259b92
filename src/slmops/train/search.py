"""Hyper-parameter search: ``slmops finetune ... --search space.yaml --trials N``.

An Optuna study (TPE or random sampler, median pruner) proposes each trial's settings from
the space (:mod:`slmops.train.space`); the trial trains with the recipe's own loop
(:func:`~slmops.train.finetune.train`) and reports its eval loss at every evaluation, and a
trial whose loss is worse than the median of earlier trials at the same step is pruned there.
Every trial, finished, pruned or failed, is one line of ``trials.jsonl`` in
``$SLMOPS_HOME/runs/search-<output>/`` (one sub-folder per trial holds its metrics). Only the
best finished trial (lowest eval loss) is registered, with the search in its lineage.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from slmops.errors import SlmopsError
from slmops.models.refs import validate_name
from slmops.models.store import ModelStore
from slmops.train.checkpoint import RunDir
from slmops.train.config import FinetuneConfig
from slmops.train.finetune import FinetuneResult, Progress, Trained, TrainEvent, finish, train
from slmops.train.lineage import final_metrics
from slmops.train.reporting import Reporters, check_reporters
from slmops.train.space import load_space, trial_config


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # "complete" | "pruned" | "failed"
    params: dict[str, Any]
    eval_loss: float | None = None  # the trial's best eval loss
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class SearchResult:
    best: FinetuneResult
    best_trial: int
    trials: list[TrialRecord]
    run_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best.to_dict(), "best_trial": self.best_trial,
                "trials": [asdict(t) for t in self.trials], "run_dir": str(self.run_dir)}  # fmt: skip


def search(
    config: FinetuneConfig, *, store: ModelStore | None = None, progress: Progress | None = None, study: Any = None
) -> SearchResult:
    """Run ``config.trials`` trials over the space in ``config.search`` and register the best.
    ``study`` may be your own Optuna study (persistent storage, enqueued trials, other pruner)."""
    if config.search is None:
        raise SlmopsError("search() needs a config with a search space.", "Pass --search space.yaml.")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise SlmopsError("A --search runs in one process.", "Run it without torchrun.")
    store = store or ModelStore()
    notify = progress or (lambda event: None)
    validate_name(config.output)
    space = load_space(config.search, config)
    check_reporters(config.report_to)
    optuna = _optuna()
    folder = store.home / "runs" / f"search-{config.output}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    study = study or optuna.create_study(
        direction="minimize", sampler=_sampler(optuna, config), pruner=optuna.pruners.MedianPruner(n_startup_trials=2)
    )
    records: list[TrialRecord] = []
    best: tuple[int, Trained] | None = None
    first_error: BaseException | None = None
    for n in range(config.trials):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in space.params}
        cfg = trial_config(config, values)
        notify(TrainEvent("status", message=f"trial {n + 1}/{config.trials}: {_fmt(values)}"))
        run_dir = RunDir(folder / f"trial-{n:03d}")
        reporters = Reporters(cfg.report_to, run_dir=run_dir.path, home=store.home,
                              run_name=f"{config.output}-trial-{n}", config=cfg)  # fmt: skip
        try:
            trained = train(cfg, store, run_dir, notify=lambda e, r=reporters: (notify(e), r(e)),
                            stop_if=partial(_report, trial), checkpoints=False)  # fmt: skip
        except SlmopsError:  # a user mistake stops the whole search
            reporters.close(ok=False)
            raise
        except Exception as exc:  # one trial failing (e.g. out of memory) does not lose the others
            reporters.close(ok=False)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            first_error = first_error or exc
            record = TrialRecord(n, "failed", values, error=f"{type(exc).__name__}: {exc}")
        else:
            t = trained.tracker
            reporters.close(ok=True, metrics=final_metrics(t))
            if trained.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, t.best_loss)
            state = "pruned" if trained.pruned else "complete"
            tps = t.tokens / t.seconds if t.seconds else 0.0
            record = TrialRecord(n, state, values, t.best_loss, t.best_step, t.step, round(t.seconds, 3), round(tps, 1))
            for _, f in run_dir.best_files():  # the weights live on in memory while this trial is the best
                f.unlink()
            if not trained.pruned and (best is None or t.best_loss < best[1].tracker.best_loss):
                best = (n, trained)
            del trained
        gc.collect()
        records.append(record)
        with (folder / "trials.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(record)) + "\n")
        loss = f"eval loss {record.eval_loss:.4f}" if record.eval_loss is not None else record.error or ""
        notify(TrainEvent("status", message=f"trial {n + 1}/{config.trials} {record.state}: {loss}"))
    if best is None:
        states = ", ".join(f"{r.number}: {r.state}" for r in records)
        raise SlmopsError(
            f"No trial of the search finished ({states}); nothing was registered.",
            f"See {folder / 'trials.jsonl'}; widen the space or run more --trials.",
        ) from first_error
    n_best, trained = best
    recipe = {"search": {"space": str(space.path), "space_sha256": space.sha256, "trials": config.trials,
                         "sampler": config.sampler, "best_trial": n_best,
                         "log": str(folder / "trials.jsonl")}}  # fmt: skip
    result = SearchResult(finish(trained, store, recipe=recipe), n_best, records, folder)
    (folder / "search.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _report(trial: Any, step: int, eval_loss: float) -> bool:
    """Give the trial its intermediate eval loss; True when the pruner says stop."""
    trial.report(eval_loss, step)
    return bool(trial.should_prune())


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise SlmopsError(
            "--search needs the optuna package, from the search extra.", "Install it: pip install 'slmops[search]'."
        ) from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sampler(optuna: Any, config: FinetuneConfig) -> Any:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=max(2, min(10, config.trials // 3)))


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
