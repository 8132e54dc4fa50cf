"""Which samples of a source each consumer of a stream reads: by shard, by sample index, or both.

A stream has ``C`` consumers (``rank * num_workers + worker``). Reading by shard
(each consumer its own shards) costs nothing extra but is only fair when the
consumers' shares hold about as many documents: a training consumer yields
documents at the same rate as every other, so one with a small share repeats its
documents more often (two shards of 10 and 45 documents on two workers: the
first worker's documents came around 4.5x as often), and one with no document
at all (an empty shard) cannot yield anything. Reading by sample index (every
consumer reads every shard and keeps every ``C``-th sample) is always fair but
reads each shard ``C`` times.

The plan takes the cheapest fair middle: the consumers form ``G`` groups (``G``
divides ``C``; consumer ``c`` is member ``c // G`` of group ``c % G``), the shards
are dealt to the groups by size (largest first, to the least loaded group), and
the members of a group split their group's samples by index. ``G`` is the
largest divisor of ``C`` whose groups' loads are all non-zero and within
``TOLERANCE`` of each other (``G = C``: pure by-shard, ``G = 1``: pure by-index).
Sizes are the shards' bytes where known (local shards, ``sources.py``), else
equal. Every consumer computes the same plan, so the shares are disjoint and
cover every sample once.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass

TOLERANCE = 0.1  # largest group load may exceed the smallest by 10%


@dataclass(frozen=True)
class Share:
    """What one consumer reads of one source."""

    shards: tuple[int, ...]  # indices into the source's URLs (its group's shards, in URL order)
    group: int  # the group's index (groups share nothing)
    member: int  # this consumer keeps the samples ``i`` with ``i % group_size == member``
    group_size: int  # consumers splitting these shards by sample index

    @property
    def counts_shard_events(self) -> bool:
        """One member per group reports tar-level events, so each shard's events count once."""
        return self.member == 0


def group_shards(sizes: Sequence[int] | None, n_shards: int, groups: int) -> list[list[int]] | None:
    """Shard indices of each of ``groups`` groups (largest shard first to the least loaded group), or
    None when the loads are not fair (a group without load, or loads more than ``TOLERANCE`` apart)."""
    weights = list(sizes) if sizes is not None else [1] * n_shards
    if len(weights) != n_shards:
        raise ValueError(f"{len(weights)} shard sizes for {n_shards} shards")
    parts: list[list[int]] = [[] for _ in range(groups)]
    heap = [(0, g) for g in range(groups)]  # (load, group): the least loaded group on top
    for i in sorted(range(n_shards), key=lambda i: (-weights[i], i)):
        load, g = heapq.heappop(heap)
        parts[g].append(i)
        heapq.heappush(heap, (load + weights[i], g))
    loads = [load for load, _ in heap]
    if min(loads) <= 0 or max(loads) > (1 + TOLERANCE) * min(loads):
        return None
    return [sorted(p) for p in parts]


def plan(sizes: Sequence[int] | None, n_shards: int, consumers: int) -> list[list[int]]:
    """The shards of each group for the largest fair number of groups (a divisor of ``consumers``)."""
    for groups in sorted((g for g in range(1, consumers + 1) if consumers % g == 0), reverse=True):
        if groups == 1:
            return [list(range(n_shards))]
        if sizes is None:  # equal sizes: shard i to group i % groups (loads differ by one shard at most)
            fair = n_shards >= groups and -(-n_shards // groups) <= (1 + TOLERANCE) * (n_shards // groups)
            parts = [list(range(g, n_shards, groups)) for g in range(groups)] if fair else None
        else:
            parts = group_shards(sizes, n_shards, groups)
        if parts is not None:
            return parts
    raise AssertionError("one group is always fair")


def share(sizes: Sequence[int] | None, n_shards: int, consumer: int, consumers: int) -> Share:
    """What ``consumer`` (of ``consumers``) reads of a source with ``n_shards`` shards of ``sizes``."""
    parts = plan(sizes, n_shards, consumers)
    groups = len(parts)
    group = consumer % groups
    return Share(tuple(parts[group]), group, consumer // groups, consumers // groups)


def rank_and_world(trainer) -> tuple[int, int]:
    """(global rank, world size): from the trainer when attached, else torchrun-style RANK / WORLD_SIZE, else
    (0, 1)."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
