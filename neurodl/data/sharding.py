"""Each process's share of an epoch's order in distributed training: the same order in every process.

The engine shards whatever batches a task gives it (:class:`~neurodl.engine.batches.TensorBatches`,
:class:`~neurodl.data.batches.ImageBatches`); both take their rows from :class:`Sharded`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch

S = TypeVar("S", bound="Sharded")


def process_share(order: Sequence[int], rank: int, world_size: int, *, pad: bool) -> list[int]:
    """Process ``rank``'s contiguous, disjoint part of ``order`` (distributed training).

    With ``pad`` the order is first extended by repeating its start, so every
    process gets the same number of items and takes the same number of steps
    (DDP needs that); without, the parts differ by at most one item and, joined
    in rank order, give back ``order`` (validation: every item counted once).

    Example:
        >>> process_share([4, 0, 3, 1, 2], 1, 2, pad=True)
        [1, 2, 4]
    """
    items = list(order)
    if world_size <= 1:
        return items
    if pad and items:
        per = -(-len(items) // world_size)
        items = (items * (1 + per * world_size // len(items)))[: per * world_size]
        return items[rank * per : (rank + 1) * per]
    base, extra = divmod(len(items), world_size)
    begin = rank * base + min(rank, extra)
    return items[begin : begin + base + (1 if rank < extra else 0)]


class Sharded:
    """Batches over ``n`` rows, reshuffled each epoch from (seed, epoch), of which this process takes its share.

    The subclass sets ``shuffle``, ``seed`` and ``epoch``; the engine calls :meth:`shard` in
    distributed training (a single process keeps every row).
    """

    shuffle: bool
    seed: int
    epoch: int
    rank: int = 0
    world_size: int = 1
    pad: bool = False

    def shard(self: S, rank: int, world_size: int, *, pad: bool) -> S:
        """The batches of process ``rank`` of ``world_size`` (see :func:`process_share`)."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world_size, sharded.pad = rank, world_size, pad
        return sharded

    def permutation(self, n: int) -> torch.Tensor:
        """This epoch's shuffled order of ``n`` rows, the same in every process."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(n, generator=generator)

    def own_rows(self, n: int) -> list[int]:
        """This process's rows of this epoch's order (shuffled or not) of ``n`` rows."""
        order = self.permutation(n).tolist() if self.shuffle else list(range(n))
        return process_share(order, self.rank, self.world_size, pad=self.pad)

    def own_count(self, n: int) -> int:
        """How many of ``n`` rows this process takes in an epoch."""
        return len(process_share(range(n), self.rank, self.world_size, pad=self.pad))
