"""Run folder, atomic checkpoints with rotation, best weights, and the metrics log.

Layout of ``$SLMOPS_HOME/runs/finetune-<output>/``::

    config.json                  the resolved config of the run
    metrics.jsonl                one line per step and per evaluation
    checkpoints/step-000040/     weights.safetensors (trainable tensors) + state.pt
                                 (optimizer, scheduler, RNG, tracker); the last K are kept
    best-step-000030.safetensors trainable tensors at the best evaluation so far
    result.json                  written when the run registered its artifact

A checkpoint folder is written under a temporary name and renamed into place, so a kill
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slmops.errors import SlmopsError
from slmops.files import atomic_path, write_atomic, write_json_atomic

_STEP = re.compile(r"^step-(\d+)$")
_BEST = re.compile(r"^best-step-(\d+)\.safetensors$")


@dataclass
class Tracker:
    """Everything about the run's progress that is not a tensor."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    train_loss: float | None = None
    eval_loss: float | None = None
    best_loss: float | None = None
    best_step: int = 0
    bad_evals: int = 0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing or any(n not in params for n in tensors):
        raise SlmopsError(f"{path} does not match the model being trained.", "Start the run again without --resume.")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self.metrics = path / "metrics.jsonl"

    # -- lifecycle ---------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.ckpt_dir.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.ckpt_dir.iterdir() if (m := _STEP.match(p.name))]
        return sorted(found)

    def unfinished(self) -> bool:
        return bool(self.checkpoints()) and not (self.path / "result.json").exists()

    def start_fresh(self, config: dict[str, Any]) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        self.ckpt_dir.mkdir(parents=True)
        self.write_json("config.json", config)

    def saved_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.path / name, data)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        tracker: Tracker,
        keep: int,
        rng_ranks: list[torch.Tensor] | None = None,
    ) -> Path:
        final = self.ckpt_dir / f"step-{tracker.step:06d}"
        tmp = self.ckpt_dir / f".partial-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(model), str(tmp / "weights.safetensors"))
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "tracker": asdict(tracker),
        }
        if rng_ranks is not None:  # every process's RNG, so that a multi-process run resumes exactly
            state["rng_ranks"] = rng_ranks
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.ckpt_dir)
        for _, old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for step, f in self.best_files():
            if step != tracker.best_step:
                f.unlink(missing_ok=True)
        return final

    def load_latest(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, *, rank: int = 0
    ) -> Tracker | None:
        """Restore the newest checkpoint; rank 0 drops log lines and best weights from after it."""
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        step, path = ckpts[-1]
        load_trainable(model, path / "weights.safetensors")
        state = torch.load(path / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        torch.set_rng_state(ranks[rank] if rank < len(ranks) else state["rng"])
        if rank:
            return Tracker(**state["tracker"])
        for s, f in self.best_files():
            if s > step:
                f.unlink()
        self._truncate_log(step)
        return Tracker(**state["tracker"])

    # -- best weights and the metrics log --------------------------------------------------------
    def best_files(self) -> list[tuple[int, Path]]:
        return sorted((int(m.group(1)), p) for p in self.path.iterdir() if (m := _BEST.match(p.name)))

    def save_best(self, model: torch.nn.Module, step: int) -> None:
        final = self.path / f"best-step-{step:06d}.safetensors"
        with atomic_path(final) as tmp:
            save_file(trainable_state(model), str(tmp))

    def best_weights(self, step: int) -> Path | None:
        path = self.path / f"best-step-{step:06d}.safetensors"
        return path if path.exists() else None

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        if not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
        write_atomic(self.metrics, "".join(ln + "\n" for ln in kept))
