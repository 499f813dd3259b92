"""A bounded, least-recently-used cache of KV state for prompt prefixes, shared by engines.

Prompts are cut into blocks of ``block`` tokens. A block's entry holds the KV state of just
those tokens (one ``(key, value)`` pair per layer, each ``[kv_heads, block, head_dim]``), and is
keyed by a digest of *every* token up to the block's end (and the engine's namespace, e.g. the
adapter), because a token's KV depends on everything before it. A new prompt walks its blocks
from the start while they are cached; the KV of that prefix is the concatenation of the blocks'
entries, and only the rest of the prompt is prefilled. At least one prompt token is always left
to prefill, since the next token's logits come from the last prompt position.

Memory is bounded by ``budget_bytes``; beyond it the least recently used blocks go first (a
block whose parent was evicted can no longer be reached and ages out in turn). The cache is
tensor-agnostic: entries may be numpy arrays or torch tensors, whatever the engine stores.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BUDGET_MB = 256
DEFAULT_BLOCK = 16

BlockKV = list[tuple[Any, Any]]  # one (key, value) pair per layer, each [kv_heads, block, head_dim]


@dataclass
class PrefixCacheStats:
    hits: int = 0  # lookups that reused at least one block
    misses: int = 0
    hit_tokens: int = 0  # prompt tokens not prefilled thanks to the cache
    lookup_tokens: int = 0  # prompt tokens of every lookup
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "hit_tokens": self.hit_tokens,
            "lookup_tokens": self.lookup_tokens,
            "evictions": self.evictions,
        }


def _nbytes(t: Any) -> int:
    if hasattr(t, "nbytes"):
        return int(t.nbytes)
    return int(t.numel() * t.element_size())


class PrefixCache:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_MB << 20, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.budget_bytes, self.block = budget_bytes, block
        self._entries: OrderedDict[bytes, tuple[BlockKV, int]] = OrderedDict()  # least recently used first
        self.bytes = 0
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def _digests(self, tokens: Sequence[int], namespace: str, blocks: int) -> list[bytes]:
        h = hashlib.blake2b(namespace.encode(), digest_size=16)
        out = []
        arr = np.asarray(tokens[: blocks * self.block], dtype=np.int64)
        for i in range(blocks):
            h.update(arr[i * self.block : (i + 1) * self.block].tobytes())
            out.append(h.copy().digest())
        return out

    def usable_blocks(self, n_tokens: int) -> int:
        """Blocks a prompt of ``n_tokens`` may take from the cache (one token is always prefilled)."""
        return max(n_tokens - 1, 0) // self.block

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> tuple[int, list[BlockKV]]:
        """The longest cached prefix of ``tokens``: ``(n_tokens, blocks)``, ``(0, [])`` on a miss.
        Counts a hit or a miss."""
        found: list[BlockKV] = []
        for digest in self._digests(tokens, namespace, self.usable_blocks(len(tokens))):
            entry = self._entries.get(digest)
            if entry is None:
                break
            self._entries.move_to_end(digest)
            found.append(entry[0])
        n = len(found) * self.block
        self.stats.lookup_tokens += len(tokens)
        if found:
            self.stats.hits += 1
            self.stats.hit_tokens += n
        else:
            self.stats.misses += 1
        return n, found

    def record_shared(self, rows: int, tokens: int) -> None:
        """``rows`` lookups that missed were served by a prefix prefilled once for them all."""
        self.stats.misses -= rows
        self.stats.hits += rows
        self.stats.hit_tokens += rows * tokens

    def insert(self, tokens: Sequence[int], block_kv: Callable[[int, int], BlockKV], namespace: str = "") -> int:
        """Cache every full block of ``tokens`` not cached yet; ``block_kv(start, end)`` returns the
        KV of ``tokens[start:end]`` (copies: the cache keeps them). Returns blocks added."""
        added = 0
        for i, digest in enumerate(self._digests(tokens, namespace, len(tokens) // self.block)):
            if digest in self._entries:
                self._entries.move_to_end(digest)
                continue
            kv = block_kv(i * self.block, (i + 1) * self.block)
            size = sum(_nbytes(k) + _nbytes(v) for k, v in kv)
            if size > self.budget_bytes:
                break
            self._entries[digest] = (kv, size)
            self.bytes += size
            added += 1
            self._evict()
        return added

    def _evict(self) -> None:
        while self.bytes > self.budget_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self.bytes -= size
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def shared_prefix_groups(prompts: Sequence[Sequence[int]], block: int,
                         aligned: bool = True) -> list[tuple[list[int], int]]:
    """Groups of at least two prompts (by index) that share a block-aligned prefix, with the
    length of the longest one they all share (leaving each at least one token), rounded down to
    whole blocks unless ``aligned`` is false: prompts that arrive together can then prefill that
    prefix once instead of once each."""
    by_first: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        if len(p) > block:
            by_first.setdefault(tuple(p[:block]), []).append(i)
    groups = []
    for members in by_first.values():
        if len(members) < 2:
            continue
        first = prompts[members[0]]
        limit = min(len(prompts[i]) - 1 for i in members)
        n = 0
        while n < limit and all(prompts[i][n] == first[n] for i in members):
            n += 1
        if aligned:
            n = (n // block) * block
        if n >= block:
            groups.append((members, n))
    return groups
