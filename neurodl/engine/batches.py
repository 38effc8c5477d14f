"""Mini-batches over tensors held whole in memory (no per-row DataLoader)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch


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


class TensorBatches:
    """Iterate over aligned tensors in mini-batches, reshuffled every epoch.

    Args:
        tensors: tensors with the same first dimension (features, targets...).
        batch_size: rows per batch; 0 means all rows (full-batch gradient descent).
        shuffle: draw a new order each epoch (from ``seed`` and the epoch number).
        seed: base seed of the shuffles.

    Example:
        >>> batches = TensorBatches(X, y, batch_size=32, shuffle=True)
        >>> for x, t in batches: ...
    """

    def __init__(
        self, *tensors: torch.Tensor, batch_size: int = 32, shuffle: bool = False, seed: int = 0
    ) -> None:
        if not tensors:
            raise ValueError("at least one tensor is needed")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("tensors must have the same number of rows")
        self.tensors = tensors
        self.n = n
        self.batch_size = n if batch_size <= 0 else min(batch_size, n)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size, self.pad = 0, 1, False

    def shard(self, rank: int, world_size: int, *, pad: bool) -> TensorBatches:
        """The batches of process ``rank`` of ``world_size`` (see :func:`process_share`)."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world_size, sharded.pad = rank, world_size, pad
        return sharded

    def set_epoch(self, epoch: int) -> None:
        """Fix the order of the next pass (the engine calls this every epoch)."""
        self.epoch = epoch

    def to(self, device: torch.device) -> TensorBatches:
        """Move the tensors once, so batches are sliced on the device."""
        moved = TensorBatches(
            *(t.to(device) for t in self.tensors),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        moved.epoch = self.epoch
        moved.rank, moved.world_size, moved.pad = self.rank, self.world_size, self.pad
        return moved

    def __len__(self) -> int:
        rows = len(process_share(range(self.n), self.rank, self.world_size, pad=self.pad))
        return (rows + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.world_size > 1:
            yield from self._shared()
            return
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.n, generator=generator).to(self.tensors[0].device)
        else:
            order = None
        for start in range(0, self.n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                yield tuple(t[index] for t in self.tensors)

    def _shared(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        mine = torch.as_tensor(
            process_share(order, self.rank, self.world_size, pad=self.pad), device=self.tensors[0].device
        )
        for start in range(0, len(mine), self.batch_size):
            index = mine[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)
