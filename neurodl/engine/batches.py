"""Mini-batches over tensors held whole in memory (no per-row DataLoader)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from neurodl.data.sharding import Sharded


class TensorBatches(Sharded):
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
        return (self.own_count(self.n) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.world_size > 1:
            yield from self._shared()
            return
        order = self.permutation(self.n).to(self.tensors[0].device) if self.shuffle else None
        for start in range(0, self.n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                yield tuple(t[index] for t in self.tensors)

    def _shared(self) -> Iterator[tuple[torch.Tensor, ...]]:
        mine = torch.as_tensor(self.own_rows(self.n), device=self.tensors[0].device)
        for start in range(0, len(mine), self.batch_size):
            index = mine[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)
