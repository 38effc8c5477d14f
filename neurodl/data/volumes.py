"""One cached dataset of preprocessed volumes, and its three uses: images, images with label maps, image pairs.

:class:`CachedVolumes` preprocesses each manifest row once (its image, and the row's label
map or target image if any) and keeps the tensors where ``--cache`` says (a
:class:`~neurodl.data.cache.VolumeStore`): :class:`VolumeDataset` (classify, autoencode),
:class:`LabelledVolumeDataset` (segment) and :class:`PairedVolumes` (translate, generate)
only say what an item is and how its training views are drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from neurodl.data.cache import VolumeStore, parse_budget
from neurodl.data.images import ImagePreprocessing, preprocess, run_pipeline

Rows = Sequence[int] | np.ndarray


def volume_store(
    cache: str, folder: Path | None, preprocessing: dict[str, Any], budget: int | str = ""
) -> VolumeStore:
    """The :class:`~neurodl.data.cache.VolumeStore` of a dataset (``budget``: bytes, or ``--cache-budget`` text)."""
    return VolumeStore(
        cache,
        folder=folder,
        preprocessing=preprocessing,
        budget=budget if isinstance(budget, int) else (parse_budget(budget) if cache == "auto" else 0),
    )


class CachedVolumes(torch.utils.data.Dataset):
    """Preprocessed volumes of a manifest's rows, each with its ``companion`` file (label map, target) if any.

    Args:
        items: per row, the list of its channel files.
        preprocessing: the run's deterministic preprocessing.
        companion: the name (``label``, ``target``) and per-row files read with each image, or None.
        pipeline: gives the preprocessing of an image and its companion (asked for only when a row is
            not cached).
        recorded: what else, beyond ``preprocessing``, decides the tensors (names the cache entries).
        cache: ``auto`` keeps preprocessed volumes in RAM while they fit ``cache_budget``
            and in ``cache_dir`` beyond it; ``memory`` keeps every one in RAM; ``disk`` keeps
            each as a file in ``cache_dir``; ``none`` preprocesses again at every use
            (see :class:`~neurodl.data.cache.VolumeStore`).
        cache_budget: bytes (or ``--cache-budget`` text: ``4GiB``, ``25%``) ``auto`` may keep in RAM.
        describe: names an item in error messages (e.g. ``row 4 of manifest.tsv``).
    """

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        preprocessing: ImagePreprocessing,
        *,
        companion: tuple[str, Sequence[Path]] | None = None,
        pipeline: Callable[[], Compose] | None = None,
        recorded: dict[str, Any] | None = None,
        cache: str = "memory",
        cache_dir: Path | None = None,
        cache_budget: int | str = "",
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self.items = [list(i) for i in items]
        self.preprocessing = preprocessing
        self.companion = None if companion is None else (companion[0], list(companion[1]))
        self.pipeline = pipeline
        self.kind = "image" if companion is None else f"image+{companion[0]}"
        self.store = volume_store(
            cache, cache_dir, {**preprocessing.to_dict(), **(recorded or {})}, cache_budget
        )
        self.describe = describe or (lambda i: "")

    def __len__(self) -> int:
        return len(self.items)

    def tensors(self, index: int) -> dict[str, torch.Tensor]:
        """The preprocessed tensors of one row (``image``, and its companion's), cached if enabled."""
        files: list[Path] = [*self.items[index]]
        if self.companion is not None:
            files.append(self.companion[1][index])
        stored = self.store.load(index, files, kind=self.kind)
        if stored is not None:
            return stored
        if self.companion is None:
            # preprocess() also says how much of a head the input's field of view cut off.
            image = preprocess(self.preprocessing, self.items[index], where=self.describe(index))
            tensors = {"image": image.as_tensor().contiguous()}
        else:
            name, companions = self.companion
            data = {"image": [str(p) for p in self.items[index]], name: str(companions[index])}
            assert self.pipeline is not None
            out = run_pipeline(self.pipeline(), data, self.describe(index))
            tensors = {key: out[key].as_tensor().float().contiguous() for key in ("image", name)}
        self.store.save(index, files, tensors, kind=self.kind)
        return tensors

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        """Preprocess every row now (so a bad file stops training before it starts)."""
        for index in range(len(self)):
            self.tensors(index)
            if progress is not None:
                progress(index)


class VolumeDataset(CachedVolumes):
    """Preprocessed volumes and labels; :meth:`subset` gives (augmented) views for training.

    Args:
        items: per image, the list of its channel files.
        labels: class index (or any target) per image.
        preprocessing, cache, cache_dir, cache_budget, describe: see :class:`CachedVolumes`.
    """

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        labels: Sequence[Any] | np.ndarray,
        preprocessing: ImagePreprocessing,
        **cached: Any,
    ) -> None:
        super().__init__(items, preprocessing, **cached)
        self.labels = torch.as_tensor(np.asarray(labels))

    def volume(self, index: int) -> torch.Tensor:
        """The preprocessed (C, X, Y, Z) tensor of one item (cached if enabled)."""
        return self.tensors(index)["image"]

    def subset(self, rows: Rows, *, augment: Compose | None = None, seed: int = 0) -> VolumeSubset:
        """A view of some items sharing this dataset's cache, optionally augmented."""
        return VolumeSubset(self, [int(r) for r in rows], augment=augment, seed=seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.volume(index), self.labels[index]


class LabelledVolumeDataset(CachedVolumes):
    """Preprocessed images with their label maps (segmentation), cached like :class:`VolumeDataset`.

    Items are (image (C, X, Y, Z), label (1, X, Y, Z) of class indices).
    """

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        masks: Sequence[Path],
        preprocessing: ImagePreprocessing,
        **cached: Any,
    ) -> None:
        super().__init__(
            items,
            preprocessing,
            companion=("label", masks),
            pipeline=preprocessing.transforms_with_label,
            **cached,
        )

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = self.tensors(index)
        return tensors["image"], tensors["label"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pair(index)

    def subset(
        self,
        rows: Rows,
        *,
        patch: Sequence[int] | None = None,
        samples: int = 1,
        augment: Compose | None = None,
        seed: int = 0,
    ) -> PatchSubset:
        """Whole volumes of some items (``patch`` None), or random patches of them for training."""
        return PatchSubset(
            self, [int(r) for r in rows], patch=patch, samples=samples, augment=augment, seed=seed
        )


class PairedVolumes(CachedVolumes):
    """Preprocessed (source, target) pairs of a manifest; the target in its own units (``resample``: onto the source's grid)."""

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        targets: Sequence[Path],
        preprocessing: ImagePreprocessing,
        *,
        resample: bool,
        **cached: Any,
    ) -> None:
        super().__init__(
            items,
            preprocessing,
            companion=("target", targets),
            pipeline=lambda: preprocessing.transforms_with_target(resample=resample),
            recorded={"resample_target": resample},
            **cached,
        )
        self.resample = resample

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = self.tensors(index)
        return tensors["image"], tensors["target"]


def epoch_seed(seed: int, epoch: int, item: int) -> int:
    """The random state of one item's augmentation or crop: a resumed run draws the same ones."""
    return (seed * 1_000_003 + epoch * 10_007 + item) % (2**31)


def _plain(value: Any) -> torch.Tensor:
    """A float tensor without MONAI's metadata: MetaTensor operations cost ~9 % of a training step."""
    tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return tensor.float()


class VolumeSubset(torch.utils.data.Dataset):
    """Some items of a :class:`VolumeDataset` (e.g. one fold), with their own augmentation."""

    def __init__(self, base: VolumeDataset, rows: list[int], *, augment: Compose | None, seed: int) -> None:
        self.base = base
        self.rows = rows
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        image = self.base.volume(row)
        if self.augment is not None:
            # Seeded per (seed, epoch, item): a resumed run draws the same augmentations.
            self.augment.set_random_state(seed=epoch_seed(self.seed, self.epoch, row))
            image = _plain(self.augment({"image": image})["image"])
        return image, self.base.labels[row]


class PatchSubset(torch.utils.data.Dataset):
    """Training patches (half centred on foreground) or whole volumes of a :class:`LabelledVolumeDataset`."""

    def __init__(
        self,
        base: LabelledVolumeDataset,
        rows: list[int],
        *,
        patch: Sequence[int] | None,
        samples: int,
        augment: Compose | None,
        seed: int,
    ) -> None:
        from monai.transforms import RandCropByPosNegLabeld

        self.base = base
        self.rows = rows
        self.seed = seed
        self.epoch = 0
        steps: list[Any] = []
        if patch is not None:
            steps.append(
                RandCropByPosNegLabeld(
                    keys=("image", "label"),
                    label_key="label",
                    spatial_size=tuple(patch),
                    pos=1,
                    neg=1,
                    num_samples=samples,
                    allow_smaller=False,
                )
            )
        self.random = (
            Compose(steps + (list(augment.transforms) if augment is not None else []))
            if steps or augment is not None
            else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        image, label = self.base.pair(row)
        if self.random is None:
            return image, label
        self.random.set_random_state(seed=epoch_seed(self.seed, self.epoch, row))
        out = self.random({"image": image, "label": label})
        samples = out if isinstance(out, list) else [out]
        images = torch.stack([_plain(s["image"]) for s in samples])
        labels = torch.stack([_plain(s["label"]) for s in samples])
        return images, labels
