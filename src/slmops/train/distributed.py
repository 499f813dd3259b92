"""Data-parallel training over several processes (``torchrun --nproc-per-node N``).

Every process loads the same model and data and runs the same loop on its own shard of each
global micro-batch (rows ``rank::world``). Each rank divides its loss by the *global* number
of target tokens, so the summed gradient is exactly the single-process gradient of the whole
batch; the step's loss and token count and the evaluation sums are reduced the same way.
Every rank therefore holds the same weights, loss, evaluation and early-stopping decision.
Rank 0 alone writes the run folder, checkpoints and metrics, and registers the result.

Where the gradients are summed depends on the hardware:

* **GPU** (every local process has one): the backend is nccl, rank ``LOCAL_RANK`` runs on
  ``cuda:LOCAL_RANK`` (model, teacher, batches) and the model is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`, whose bucketed all-reduces overlap the
  backward pass (``no_sync`` for all but the last micro-batch of a step).
* **CPU**: the backend is gloo and one flat all-reduce per optimizer step sums the gradients
  (a small model's few LoRA tensors gain nothing from DDP's buckets there).

``SLMOPS_DDP=1`` uses DDP on CPU too and ``SLMOPS_DDP=0`` the flat all-reduce on GPU, to
compare the two; both give the same trajectory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
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
    device: str = "cpu"  # where this rank trains: cuda:LOCAL_RANK under nccl
    ddp: bool = False  # sum gradients with DistributedDataParallel (else one flat all-reduce per step)

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
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # nccl reduces GPU tensors only
        torch.distributed.all_reduce(t)
        return t.tolist()

    def wrap(self, model: torch.nn.Module, loss_sum: Callable[[Any, Any], torch.Tensor]) -> DataParallelLoss | None:
        """``model`` under DistributedDataParallel with ``loss_sum(model, batch)`` as its forward, when
        this group sums gradients that way (else None: call :meth:`reduce_grads` after the backward)."""
        if not (self.active and self.ddp):
            return None
        return DataParallelLoss(model, loss_sum, self)

    def reduce_grads(self, params: Sequence[torch.Tensor], extra: Sequence[float]) -> list[float]:
        """Sum every parameter's gradient and ``extra`` over all processes in one all-reduce."""
        if not self.active:
            return list(extra)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        tail = torch.tensor(extra, dtype=torch.float32, device=self.device)
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads] + [tail])
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


class DataParallelLoss:
    """A training step's loss as a module, so DistributedDataParallel sees the forward that
    makes the gradients (the loss reaches inside the model for its decoder and head). DDP
    *averages* gradients over the ranks; the backward scales by the world size to keep them a
    sum, like the flat all-reduce."""

    def __init__(self, model: torch.nn.Module, loss_sum: Callable[[Any, Any], torch.Tensor], dist: Dist) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.world = dist.world
        ids = [torch.device(dist.device).index] if dist.device.startswith("cuda") else None
        self.ddp = DistributedDataParallel(_Forward(model, loss_sum), device_ids=ids)

    def backward(self, batch: Any, scale: float, *, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients are synchronised on the ``last``
        one of the step); returns the batch's summed loss."""
        self.ddp.module.batch = batch  # handed over directly: DDP never walks or copies the batch
        with nullcontext() if last else self.ddp.no_sync():
            loss_sum = self.ddp()
            (loss_sum * (self.world / scale)).backward()
        self.ddp.module.batch = None
        return loss_sum.detach()


class _Forward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, loss_sum: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model  # registered: DDP hooks exactly its trainable parameters
        self._loss_sum = loss_sum
        self.batch: Any = None  # the micro-batch of the current forward (already on the device)

    def forward(self) -> torch.Tensor:
        return self._loss_sum(self.model, self.batch)


def _ddp_wanted(on_gpu: bool) -> bool:
    choice = os.environ.get("SLMOPS_DDP", "").strip()
    return on_gpu if choice not in ("0", "1") else choice == "1"


@contextmanager
def distributed() -> Iterator[Dist]:
    """The process group set up by ``torchrun`` (WORLD_SIZE > 1), else a single process. A
    group that the caller already initialised is used and left open. With a GPU for every
    local process, each rank is placed on ``cuda:LOCAL_RANK`` and the backend is nccl."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield Dist()
        return
    import torch.distributed as td

    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    owned = not td.is_initialized()
    if owned:
        on_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        if on_gpu:
            torch.cuda.set_device(local_rank)  # before the group: nccl binds each rank to its device
        td.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=30))
    else:
        on_gpu = td.get_backend() == "nccl"
        if on_gpu:
            torch.cuda.set_device(local_rank)
    device = f"cuda:{local_rank}" if on_gpu else "cpu"
    try:
        yield Dist(td.get_rank(), td.get_world_size(), device=device, ddp=_ddp_wanted(on_gpu))
    finally:
        if owned:
            td.destroy_process_group()
