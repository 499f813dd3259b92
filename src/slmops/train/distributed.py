"""Data-parallel training over several processes (``torchrun --nproc-per-node N``).

Every process loads the same model and data and runs the same loop on its own shard of each
global micro-batch (rows ``rank::world``). After the backward passes, one all-reduce per
optimizer step sums the gradients (each rank divides its loss by the *global* number of
target tokens, so the sum is exactly the single-process gradient of the whole batch) together
with the step's loss and token count; evaluation sums are reduced the same way. Every rank
therefore holds the same weights, loss, evaluation and early-stopping decision. Rank 0 alone
writes the run folder, checkpoints and metrics, and registers the result. The backend is gloo
on CPU (nccl when every process has a GPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; a single process is rank 0 of 1 and every method is a no-op."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world])

    def sum(self, values: Sequence[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def reduce_grads(self, params: Sequence[torch.Tensor], extra: Sequence[float]) -> list[float]:
        """Sum every parameter's gradient and ``extra`` over all processes in one all-reduce."""
        if not self.active:
            return list(extra)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads] + [torch.tensor(extra, dtype=torch.float32)])
        torch.distributed.all_reduce(flat)
        at = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[at : at + n].view_as(g).to(g.dtype)
            at += n
        return flat[at:].tolist()

    def broadcast_params(self, model: torch.nn.Module) -> None:
        """Start every process from rank 0's trainable weights (e.g. its LoRA initialisation)."""
        if self.active:
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        torch.distributed.broadcast(p.data, src=0)

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rng(self) -> list[torch.Tensor] | None:
        """Every process's CPU RNG state (dropout), for a checkpoint; None for one process."""
        if not self.active:
            return None
        states: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(states, torch.get_rng_state())
        return states

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


@contextmanager
def distributed() -> Iterator[Dist]:
    """The process group set up by ``torchrun`` (WORLD_SIZE > 1), else a single process. A
    group that the caller already initialised is used and left open."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield Dist()
        return
    import torch.distributed as td

    owned = not td.is_initialized()
    if owned:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
        td.init_process_group(backend, timeout=timedelta(minutes=30))
    try:
        yield Dist(td.get_rank(), td.get_world_size())
    finally:
        if owned:
            td.destroy_process_group()
