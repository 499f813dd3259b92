"""Progress bars shared by the commands that train or ask a teacher (finetune, distill, run)."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from slmops.cli.common import err_console, status
from slmops.distill.generate import GenerateEvent
from slmops.train.finetune import TrainEvent


class TrainBar:
    """Renders :class:`TrainEvent`s: a bar with loss, tokens/s and ETA; status lines on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("[bold]finetune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} eval {task.fields[eval]} | {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.task: Any = None
        self.started = time.perf_counter()

    def __enter__(self) -> TrainBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def update(self, e: TrainEvent) -> None:
        if not self.enabled:
            return
        if e.kind == "status":
            status(e.message)
        elif e.kind == "start":
            self.task = self.bar.add_task("train", total=e.total_steps, completed=e.step, loss="-", eval="-", tps="-")
            if e.step:
                status(f"resumed at step {e.step}")
        elif self.task is not None and e.kind == "step":
            self.bar.update(self.task, completed=e.step, loss=f"{e.loss:.4f}", tps=f"{e.tokens_per_second:.0f}")
        elif self.task is not None and e.kind == "eval":
            self.bar.update(self.task, eval=f"{e.eval_loss:.4f}")


class GenerateBar:
    """Renders :class:`GenerateEvent`s: teacher answers done, accepted and rejected."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("[bold]distill generate"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("accepted {task.fields[ok]} rejected {task.fields[bad]}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.task: Any = None

    def __enter__(self) -> GenerateBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def update(self, e: GenerateEvent) -> None:
        if not self.enabled:
            return
        if e.kind == "status":
            status(e.message)
        elif e.kind == "start":
            self.task = self.bar.add_task("gen", total=e.total, completed=e.done, ok=0, bad=0)
        elif self.task is not None:
            self.bar.update(self.task, completed=e.done, ok=e.accepted, bad=e.rejected)
