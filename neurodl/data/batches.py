"""Mini-batches of image datasets, the same order in every process and on resume."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from neurodl.data.sharding import Sharded


class Items(Protocol):
    """What :class:`ImageBatches` batches: a sized, indexable dataset (``epoch`` is set when it has one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class ImageBatches(Sharded):
    """Mini-batches of a dataset (a :class:`~neurodl.data.volumes.VolumeDataset`'s subset, patches, slices ...),
    reshuffled each epoch from (seed, epoch).

    In distributed training the engine calls :meth:`shard`: each process then
    iterates over its own part of the same per-epoch order.
    """

    def __init__(
        self, dataset: Items, *, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = len(dataset) if batch_size <= 0 else batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.workers = workers
        self.epoch = 0
        self.rank, self.world_size, self.pad = 0, 1, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.own_count(len(self.dataset)) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.own_rows(len(self.dataset))
        loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]  # any sized, indexable dataset serves
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.workers,
            persistent_workers=False,
        )
        yield from loader
