"""Examples to rows, rows to batches, in an order fixed by the seed and the step.

A *row* is one or more examples laid end to end (packing). Position ids restart at 0 for
every example and no attention mask is passed, so transformers' SDPA/eager/flash attention
builds a block-diagonal causal mask from the position ids: no token attends across
examples. Padding at the end of a row is a separate block whose targets are ignored.
Targets are shifted *within* each example, so the last token of one example never learns
to predict the first token of the next.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from slmops.data.examples import IGNORE, Example

Row = tuple[Example, ...]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T), restarting per example
    targets: torch.Tensor  # (B, T), next-token targets, -100 where no loss
    tokens: int  # real (non-padding) tokens
    lengths: tuple[int, ...] | None = None  # each row's length when every row holds one example (no packing)

    @property
    def target_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (itself when already there)."""
        if self.input_ids.device == torch.device(device):
            return self
        return replace(self, input_ids=self.input_ids.to(device), position_ids=self.position_ids.to(device),
                       targets=self.targets.to(device))  # fmt: skip


def split_eval(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded hold-out split; at least one example on each side."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def make_rows(examples: Sequence[Example], max_len: int, *, packing: bool, seed: int) -> list[Row]:
    """One example per row, or (packing) examples in a seeded order filled greedily into rows."""
    if not packing:
        return [(e,) for e in examples]
    order = list(examples)
    random.Random(seed).shuffle(order)
    rows: list[Row] = []
    current: list[Example] = []
    used = 0
    for e in order:
        if current and used + len(e) > max_len:
            rows.append(tuple(current))
            current, used = [], 0
        current.append(e)
        used += len(e)
    if current:
        rows.append(tuple(current))
    return rows


def collate(rows: Sequence[Row], pad_id: int) -> Batch:
    width = max(sum(len(e) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e)
            ids[b, at : at + n] = torch.tensor(e.input_ids)
            pos[b, at : at + n] = torch.arange(n)
            tgt[b, at : at + n - 1] = torch.tensor(e.labels[1:])
            at += n
        pos[b, at:] = torch.arange(width - at)  # padding: its own block
    single = all(len(row) == 1 for row in rows)
    lengths = tuple(len(row[0]) for row in rows) if single else None
    return Batch(ids, pos, tgt, sum(len(e) for row in rows for e in row), lengths)


class BatchPlan:
    """Which rows form micro-batch ``k``: epoch ``k // per_epoch`` is a permutation seeded
    by ``(seed, epoch)``, so any step can be reproduced without replaying the ones before it."""

    def __init__(self, rows: Sequence[Row], batch_size: int, seed: int) -> None:
        self.rows = list(rows)
        self.batch_size = min(batch_size, len(self.rows))
        self.seed = seed
        self.per_epoch = max(1, len(self.rows) // self.batch_size)  # drop the ragged tail
        self._perm: tuple[int, list[int]] | None = None

    def _permutation(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=gen).tolist())
        return self._perm[1]

    def micro_batch(self, k: int) -> list[Row]:
        epoch, i = divmod(k, self.per_epoch)
        perm = self._permutation(epoch)
        return [self.rows[j] for j in perm[i * self.batch_size : (i + 1) * self.batch_size]]

    def epoch_of(self, k: int) -> float:
        return k / self.per_epoch


def eval_batches(examples: Sequence[Example], max_len: int, batch_size: int, pad_id: int) -> list[Batch]:
    rows = make_rows(examples, max_len, packing=True, seed=0)
    return [collate(rows[i : i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]
