"""Image preprocessing recorded in the run and inverted on output, and image datasets.

Preprocessing is a MONAI pipeline: load (with neurodl's checks) -> reorient to
RAS -> resample to ``spacing`` -> optionally crop to the head -> pad/crop to
``size`` -> normalise intensities. Its parameters are saved in the run's
``preprocessing.json`` so ``predict`` applies exactly the same, and MONAI's
invertible transforms bring any map computed in that space back to the
input's own grid and affine.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    ResizeWithPadOrCropd,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)
from monai.transforms.utils import is_positive
from nibabel.orientations import io_orientation

from neurodl.data.cache import VolumeStore, parse_budget
from neurodl.data.intensity import NormalizeNonzerod
from neurodl.engine.batches import process_share
from neurodl.errors import ImageError, UsageError
from neurodl.io.nifti import load_volume, read_image, require_3d_shape, voxel_size

NORMALIZATIONS = ("zscore", "minmax", "percentile")
# A run whose recorded input size exceeds this (1 GB per float32 channel, e.g. 640^3) was tampered
# with: a 3D network could not have been trained on it.
MAX_NETWORK_VOXELS = 2**28
AUGMENTATIONS = ("none", "light", "strong")
log = logging.getLogger(__name__)
# Whole-volume inputs (classify, autoencode, translate) planned from the headers stay within this
# many voxels a side: a 1 mm head cropped to its bounding box (about 140x180x150 mm) becomes about
# 1.4 mm voxels and 112x128x112, which a 3D CNN trains on in practical time on a CPU or one GPU.
WHOLE_VOLUME_SIDE = 128
# The head: voxels brighter than this share of the image's 99th percentile (scanner noise and air are
# darker), without isolated specks.
HEAD_THRESHOLD = 0.1
# Heads measured (voxels read) to plan the crop: enough to see their spread, few enough to be quick.
PLANNING_SAMPLE = 6
# A share of the head cut off by the input's field of view worth telling the user about.
CUT_WARNING = 0.01


def ras_spacing_and_shape(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size and array shape along the R, A, S axes (after reorientation to RAS)."""
    order = io_orientation(affine)[:, 0].astype(int)
    spacing = np.zeros(3)
    extent = np.zeros(3)
    sizes = voxel_size(affine)
    for axis in range(3):
        spacing[order[axis]] = sizes[axis]
        extent[order[axis]] = shape[axis]
    return spacing, extent


def header_grid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxel size and array shape along R, A, S from a file's header (voxels are not read).

    Raises:
        ImageError: the file is unreadable, or has fewer than three axes (extra volumes are
            refused, naming their manifest row, when the voxels are loaded).
    """
    image = read_image(path)
    require_3d_shape(path, image.shape[:3])
    return ras_spacing_and_shape(image.affine, image.shape[:3])


class LoadChannelsd(MapTransform):
    """Load one or several NIfTI files (channels) into a MetaTensor (C, X, Y, Z) with its affine.

    neurodl's loader does the checks (missing, truncated, 4D, NaN...), so errors
    name the file; the channels of one row must share a grid.
    """

    def __init__(self, keys: str = "image") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d: dict[Hashable, Any] = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_channels(d[key])
        return d


def load_channels(paths: Sequence[str | Path]) -> MetaTensor:
    """Stack the files of one row as channels, refusing channels on different grids."""
    volumes = [load_volume(p, require_finite=True) for p in paths]
    for volume in volumes:
        if volume.data.size and volume.data.min() == volume.data.max():
            raise ImageError(
                volume.path or "image",
                f"is constant: every voxel is {volume.data.flat[0]:g}; there is no image to learn from or predict on.",
                "The image is blank; re-export it, or remove it from the inputs.",
            )
    reference = volumes[0]
    for volume in volumes[1:]:
        if volume.shape != reference.shape or not np.allclose(volume.affine, reference.affine, atol=1e-3):
            raise ImageError(
                volume.path or "image",
                f"has shape {volume.shape} and orientation {volume.orientation}, but the first channel {reference.path} has {reference.shape} and {reference.orientation}; the channels of one image must share a grid.",
                "Resample the channels onto one grid first (e.g. with ANTs or FSL flirt -applyxfm).",
            )
    array = np.stack([v.data for v in volumes]).astype(np.float32)
    meta = {"filename_or_obj": str(reference.path), "original_affine": reference.affine.copy()}
    return MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(reference.affine), meta=meta)


class LoadTargetd(MapTransform):
    """Load the image to synthesise (image translation) on the source image's grid.

    Args:
        keys: the target key (its value is the file path).
        resample: resample a target on another grid onto the source's (trilinear);
            otherwise such a target is refused.
    """

    def __init__(self, keys: str, resample: bool = False) -> None:
        super().__init__(keys)
        self.resample = resample

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d: dict[Hashable, Any] = dict(data)
        image = d["image"]
        affine = image.affine.numpy()
        shape = tuple(image.shape[1:])
        for key in self.key_iterator(d):
            target = load_volume(d[key], require_finite=True)
            array = np.asarray(target.data, dtype=np.float32)
            if target.shape != shape or not np.allclose(target.affine, affine, atol=1e-3):
                if not self.resample:
                    reference = Path(str(image.meta.get("filename_or_obj", "the source image")))
                    raise ImageError(
                        target.path or "target",
                        f"has shape {target.shape} and orientation {target.orientation}, but its source image {reference.name} has {shape} and another grid; paired images must share a grid.",
                        "Register and resample the pair onto one grid first, or add --resample-target to resample the target onto the source (trilinear).",
                    )
                import nibabel as nib
                from nibabel.processing import resample_from_to

                moved = resample_from_to(nib.Nifti1Image(array, target.affine), (shape, affine), order=1)
                array = np.asarray(moved.dataobj, dtype=np.float32)
            d[key] = MetaTensor(
                torch.from_numpy(array[None]),
                affine=image.affine.clone(),
                meta={"filename_or_obj": str(target.path)},
            )
        return d


class LoadLabeld(MapTransform):
    """Load a label map on the image's grid and map its values to class indices 0..K-1.

    Args:
        keys: the label key (its value is the mask path).
        values: the label values of the run, background (0) first; index i stands for values[i].
    """

    def __init__(self, keys: str, values: Sequence[int]) -> None:
        super().__init__(keys)
        self.values = np.asarray(values, dtype=np.int64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d: dict[Hashable, Any] = dict(data)
        image = d["image"]
        for key in self.key_iterator(d):
            mask = load_volume(d[key], dtype=None)
            reference = Path(str(image.meta.get("filename_or_obj", "the image")))
            if mask.shape != tuple(image.shape[1:]) or not np.allclose(
                mask.affine, image.affine.numpy(), atol=1e-3
            ):
                raise ImageError(
                    mask.path or "mask",
                    f"has shape {mask.shape} and orientation {mask.orientation}, but its image {reference.name} has {tuple(image.shape[1:])} and another grid; a mask must share its image's grid.",
                    "Resample the mask onto the image with nearest-neighbour interpolation first.",
                )
            values = np.asarray(mask.data)
            fractional = values.dtype.kind == "f" and (
                not np.all(np.isfinite(values)) or not np.all(values == np.round(values))
            )
            if fractional:
                raise ImageError(
                    mask.path or "mask",
                    "holds non-integer values; a label map must hold whole numbers.",
                    "Give the integer label image (e.g. *_dseg.nii.gz), not probabilities.",
                )
            values = values.astype(np.int64)
            index = np.searchsorted(self.values, values)
            index = np.clip(index, 0, len(self.values) - 1)
            unknown = np.unique(values[self.values[index] != values])
            if unknown.size:
                raise ImageError(
                    mask.path or "mask",
                    f"holds label values {', '.join(map(str, unknown[:10]))} that the model does not know (it knows {', '.join(map(str, self.values))}).",
                    "Relabel the mask, or train with these labels.",
                )
            d[key] = MetaTensor(
                torch.from_numpy(index[None].astype(np.float32)),
                affine=image.affine.clone(),
                meta={"filename_or_obj": str(mask.path)},
            )
        return d


def head_mask(array: np.ndarray, threshold: float = HEAD_THRESHOLD, *, clean: bool = True) -> np.ndarray:
    """The head in a (C, X, Y, Z) or (X, Y, Z) array: voxels of the first channel above
    ``threshold`` x its 99th percentile (from its minimum), without the slices that hold only
    specks of noise (no more than twice the outermost slices' count)."""
    values = np.asarray(array[0] if array.ndim == 4 else array, dtype=np.float32)
    sample = values[::2, ::2, ::2] if values.size > 2**21 else values
    top = float(np.percentile(sample, 99))
    low = float(sample.min())
    mask = values > low + threshold * (top - low)
    if clean and mask.any():
        for axis in range(3):
            counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
            # Specks of noise: the count in the outermost slices (air), where the head is not.
            noise = min(float(np.median(counts[:4])), float(np.median(counts[-4:])))
            keep = counts > max(2 * noise, 0.002 * float(counts.max()))
            mask &= keep.reshape([-1 if a == axis else 1 for a in range(3)])
    return mask


class HeadMask:
    """``select_fn`` of MONAI's CropForeground: the head (see :func:`head_mask`), not every non-zero voxel
    (scanner noise makes nearly every voxel of a real image non-zero)."""

    def __init__(self, threshold: float = HEAD_THRESHOLD) -> None:
        self.threshold = threshold

    def __call__(self, image: Any) -> Any:
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        mask = head_mask(array, self.threshold)
        return torch.from_numpy(np.broadcast_to(mask, array.shape).copy())


class FieldOfViewCheckd(MapTransform):
    """Measure, before the crop/pad to ``size``, how much of the head that crop would cut off.

    Changes nothing; records ``head_cut`` (share of head voxels outside the kept centre),
    ``extent_mm`` and ``kept_mm`` in the image's metadata for :func:`preprocess` to report.
    """

    def __init__(self, size: Sequence[int], threshold: float) -> None:
        super().__init__("image")
        self.size = tuple(int(s) for s in size)
        self.threshold = threshold

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        image = d["image"]
        shape = tuple(int(s) for s in image.shape[1:])
        if all(n <= k for n, k in zip(shape, self.size, strict=True)):
            return d
        mask = head_mask(image.detach().cpu().numpy(), self.threshold, clean=False)
        kept = mask.copy()
        # ResizeWithPadOrCrop keeps the centre (the lower half of an odd excess is cut first).
        window = tuple(
            slice(max(0, (n - k) // 2), max(0, (n - k) // 2) + min(n, k))
            for n, k in zip(shape, self.size, strict=True)
        )
        kept[window] = False
        total = int(mask.sum())
        spacing = [float(v) for v in image.pixdim[:3]] if isinstance(image, MetaTensor) else [1.0] * 3
        image.meta["head_cut"] = float(kept.sum()) / total if total else 0.0
        image.meta["extent_mm"] = [round(n * sp) for n, sp in zip(shape, spacing, strict=True)]
        image.meta["kept_mm"] = [
            round(min(n, k) * sp) for n, k, sp in zip(shape, self.size, spacing, strict=True)
        ]
        return d


@dataclass(frozen=True)
class ImagePreprocessing:
    """The deterministic preprocessing of a run, saved in ``preprocessing.json``.

    Attributes:
        spacing: target voxel size in mm (R, A, S).
        size: array size after resampling: exactly this size (``resize``), or at least this size.
        normalize: ``zscore`` (mean 0, sd 1 over non-zero voxels), ``minmax`` or ``percentile`` (1-99 % to 0-1).
        crop_foreground: crop to the head's bounding box first.
        channels: number of input channels (image columns).
        resize: crop/pad to ``size`` (classification); otherwise only pad up to ``size``
            (segmentation: whole volumes, however large, for sliding-window inference).
        label_values: label values of a segmentation run, background first.
        head_threshold: what ``crop_foreground`` keeps: the head (voxels above this share of
            the 99th percentile, see :func:`head_mask`); 0: every non-zero voxel (runs made
            before heads were measured).
        planned: how spacing and size were chosen, in words (empty when they were given).
    """

    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    normalize: str = "zscore"
    crop_foreground: bool = False
    channels: int = 1
    resize: bool = True
    label_values: tuple[int, ...] = ()
    head_threshold: float = 0.0
    planned: str = ""

    def describe(self) -> str:
        """The input the network sees, in words (e.g. ``1.4 mm voxels, 112x128x112, cropped to the head``)."""
        spacing = self.spacing
        mm = f"{spacing[0]:g}" if len(set(spacing)) == 1 else "x".join(f"{v:g}" for v in spacing)
        text = f"{mm} mm voxels, {'x'.join(map(str, self.size))}"
        if self.crop_foreground:
            text += ", cropped to the head"
        return f"{text} ({self.planned})" if self.planned else text

    def transforms(self) -> Compose:
        """The MONAI pipeline, from a list of file paths to a normalised tensor.

        Always the same object for one preprocessing: MONAI inverts only with the
        transform instances that were applied.
        """
        return self._pipeline

    def transforms_with_label(self) -> Compose:
        """The same pipeline for an image (key ``image``) and its label map (key ``label``)."""
        return self._labelled_pipeline

    @functools.cached_property
    def _pipeline(self) -> Compose:
        return Compose(self._steps(("image",)))

    @functools.cached_property
    def _labelled_pipeline(self) -> Compose:
        return Compose(self._steps(("image", "label")))

    def transforms_with_target(self, *, resample: bool = False) -> Compose:
        """The same pipeline for a source image (``image``) and the image to synthesise from
        it (``target``: same grid and spatial steps, intensities left in its own units).
        """
        return self._target_pipelines[resample]

    @functools.cached_property
    def _target_pipelines(self) -> dict[bool, Compose]:
        return {r: Compose(self._steps(("image", "target"), resample_target=r)) for r in (False, True)}

    def _steps(self, keys: tuple[str, ...], *, resample_target: bool = False) -> list[Any]:
        steps: list[Any] = [LoadChannelsd("image")]
        if "target" in keys:
            steps.append(LoadTargetd("target", resample_target))
        if "label" in keys:
            steps.append(LoadLabeld("label", self.label_values))
        modes = tuple("nearest" if key == "label" else "bilinear" for key in keys)
        steps += [
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            # float32, not MONAI's float64 default: the same voxels to float32 rounding, in a third
            # of the time, and no float64 copy of a whole head to convert back.
            Spacingd(keys=keys, pixdim=self.spacing, mode=modes, dtype=torch.float32),
        ]
        if self.crop_foreground:
            # Runs recorded before heads were measured (head_threshold 0) keep MONAI's "non-zero".
            select: Callable[[Any], Any] = (
                HeadMask(self.head_threshold) if self.head_threshold > 0 else is_positive
            )
            steps.append(
                CropForegroundd(keys=keys, source_key="image", select_fn=select, margin=2, allow_smaller=True)
            )
        if self.resize:
            steps.append(FieldOfViewCheckd(self.size, self.head_threshold or HEAD_THRESHOLD))
            steps.append(ResizeWithPadOrCropd(keys=keys, spatial_size=self.size))
        else:
            steps.append(SpatialPadd(keys=keys, spatial_size=self.size))
        if self.normalize == "zscore":
            # MONAI's NormalizeIntensityd(nonzero=True, channel_wise=True), by sums: 3x faster.
            steps.append(NormalizeNonzerod("image"))
        elif self.normalize == "minmax":
            steps.append(ScaleIntensityd(keys="image", minv=0.0, maxv=1.0, channel_wise=True))
        else:
            steps.append(
                ScaleIntensityRangePercentilesd(
                    keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
                )
            )
        steps.append(EnsureTyped(keys=keys, dtype=torch.float32))
        return steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ImagePreprocessing:
        try:
            spacing = tuple(float(s) for s in payload["spacing"])
            size = tuple(int(s) for s in payload["size"])
            values = tuple(int(v) for v in payload.get("label_values", ()))
            if (
                len(spacing) != 3
                or len(size) != 3
                or not all(0.05 <= s <= 50 for s in spacing)
                or not all(1 <= s <= 1024 for s in size)
                or math.prod(size) > MAX_NETWORK_VOXELS
            ):
                raise ValueError(f"spacing {spacing} or size {size} out of range")
            if payload.get("normalize", "zscore") not in NORMALIZATIONS:
                raise ValueError(f"unknown normalisation {payload.get('normalize')}")
            if len(values) > 1000:
                raise ValueError(f"{len(values)} label values")
            return cls(
                spacing=spacing,  # type: ignore[arg-type]
                size=size,  # type: ignore[arg-type]
                normalize=payload.get("normalize", "zscore"),
                crop_foreground=bool(payload.get("crop_foreground", False)),
                channels=int(payload.get("channels", 1)),
                resize=bool(payload.get("resize", True)),
                label_values=values,
                head_threshold=min(0.9, max(0.0, float(payload.get("head_threshold", 0.0)))),
                planned=str(payload.get("planned", ""))[:500],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"image preprocessing is damaged ({exc})") from exc


def plan_preprocessing(
    paths: Sequence[Path],
    *,
    spacing: Sequence[float],
    size: Sequence[int],
    normalize: str,
    crop_foreground: bool,
    channels: int,
    resize: bool = True,
    label_values: Sequence[int] = (),
) -> ImagePreprocessing:
    """Choose spacing and size from the training images where not given.

    Spacing defaults to the median voxel size (per RAS axis); size to the median
    field of view at that spacing, rounded up to a multiple of 16 so networks that
    halve the size four times fit. Whole-volume inputs (``resize``) that would
    exceed :data:`WHOLE_VOLUME_SIDE` voxels a side (full-size 1 mm heads) are
    instead cropped to the head, measured on a few training images, and resampled
    to the spacing that brings the largest head within that side. Explicit
    ``spacing``/``size`` always win.
    """
    if normalize not in NORMALIZATIONS:
        raise UsageError(f"--normalize '{normalize}' is not one of: {', '.join(NORMALIZATIONS)}.")
    spacings, extents = [], []
    for path in paths:
        s, e = header_grid(path)
        spacings.append(s)
        extents.append(s * e)
    planned = ""
    if spacing:
        target = np.asarray([float(spacing[0])] * 3 if len(spacing) == 1 else [float(s) for s in spacing])
        if target.shape != (3,) or (target <= 0).any():
            raise UsageError(
                f"--spacing must be one or three positive numbers (mm), not {','.join(map(str, spacing))}."
            )
    else:
        target = np.round(np.median(np.asarray(spacings), axis=0), 3)
    if size:
        shape = [int(size[0])] * 3 if len(size) == 1 else [int(s) for s in size]
        if len(shape) != 3 or min(shape) < 4:
            raise UsageError(f"--size must be one or three integers >= 4, not {','.join(map(str, size))}.")
    else:
        fov = np.median(np.asarray(extents), axis=0)
        shape = [int(16 * math.ceil(f / t / 16)) for f, t in zip(fov, target, strict=True)]
        if resize and not spacing and max(shape) > WHOLE_VOLUME_SIDE and paths:
            heads = head_extents(paths)
            head = np.max(heads, axis=0)
            coarsest = float(math.ceil(10 * float(head.max()) / WHOLE_VOLUME_SIDE) / 10)
            target = np.maximum(target, coarsest)
            shape = [
                min(WHOLE_VOLUME_SIDE, int(16 * math.ceil(h / t / 16)))
                for h, t in zip(head, target, strict=True)
            ]
            crop_foreground = True
            planned = (
                f"planned: {'x'.join(str(round(f)) for f in fov)} mm images, heads of at most "
                f"{'x'.join(str(round(h)) for h in head)} mm in {len(heads)} measured, "
                f"at most {WHOLE_VOLUME_SIDE} voxels a side; --spacing/--size choose otherwise"
            )
    return ImagePreprocessing(
        spacing=(float(target[0]), float(target[1]), float(target[2])),
        size=(shape[0], shape[1], shape[2]),
        normalize=normalize,
        crop_foreground=crop_foreground,
        channels=channels,
        resize=resize,
        label_values=tuple(int(v) for v in label_values),
        head_threshold=HEAD_THRESHOLD if crop_foreground else 0.0,
        planned=planned,
    )


def head_extents(paths: Sequence[Path], sample: int = PLANNING_SAMPLE) -> np.ndarray:
    """The head's bounding box (mm along R, A, S, with the 2-voxel crop margin) in up to
    ``sample`` of ``paths``, spread over the list: (n, 3)."""
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, num=min(sample, len(paths)))})
    boxes = []
    for index in picks:
        volume = load_volume(paths[index], require_finite=True)
        # Every other voxel of a large image: the box to a voxel or two, in an eighth of the time.
        step = 2 if min(volume.shape[:3]) >= 96 else 1
        mask = head_mask(np.asarray(volume.data)[::step, ::step, ::step])
        if not mask.any():
            continue
        found = np.nonzero(mask)
        counts = [step * int(found[a].max() - found[a].min() + 1) + 4 for a in range(3)]
        ras_spacing, ras_counts = ras_spacing_and_shape(volume.affine, counts)
        boxes.append(ras_spacing * ras_counts)
    if not boxes:
        return np.asarray([header_grid(paths[0])[0] * header_grid(paths[0])[1]])
    return np.asarray(boxes)


def augmentation(level: str, *, label: bool = False) -> Compose | None:
    """Random transforms for training images only: flips, small affine, intensity, bias field, noise.

    With ``label`` the spatial transforms move the label map (key ``label``) with the
    image, with nearest-neighbour interpolation.
    """
    if level not in AUGMENTATIONS:
        raise UsageError(f"--augment '{level}' is not one of: {', '.join(AUGMENTATIONS)}.")
    if level == "none":
        return None
    strong = level == "strong"
    keys = ("image", "label") if label else ("image",)
    steps: list[Any] = [
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),  # left-right: brains are roughly symmetric
        RandAffined(
            keys=keys,
            prob=0.5 if not strong else 0.8,
            rotate_range=(0.1 if not strong else 0.25,) * 3,
            scale_range=(0.05 if not strong else 0.12,) * 3,
            translate_range=(2 if not strong else 5,) * 3,
            padding_mode="zeros",
            mode=("bilinear", "nearest")[: len(keys)],
        ),
        RandGaussianNoised(keys="image", prob=0.2 if not strong else 0.4, std=0.05 if not strong else 0.1),
    ]
    if strong:
        steps += [
            RandBiasFieldd(keys="image", prob=0.3, coeff_range=(0.0, 0.2)),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
        ]
    return Compose(steps)


def run_pipeline(pipeline: Compose, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Apply a MONAI pipeline; an :class:`ImageError` raised inside it comes out as itself.

    MONAI wraps errors raised inside transforms in RuntimeErrors; ours name the file
    and the fix, so they are unwrapped, with ``where`` (e.g. a manifest row) added.
    """
    try:
        return pipeline(data)
    except (ImageError, RuntimeError) as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ImageError):
            cause = cause.__cause__
        if not isinstance(cause, ImageError):
            raise
        if where:
            cause.message = f"{cause.message} ({where})"
        raise cause from None


def preprocess(preprocessing: ImagePreprocessing, paths: Sequence[Path], *, where: str = "") -> MetaTensor:
    """Load and preprocess one image (its channel files), keeping what is needed to invert it.

    An image whose head does not fit the run's input (a larger field of view than the
    training images', at the run's spacing) is still brought to that input, the way the
    training images were; what is cut off is said in a warning.
    """
    image = run_pipeline(preprocessing.transforms(), {"image": [str(p) for p in paths]}, where)["image"]
    cut = float(image.meta.get("head_cut", 0.0)) if isinstance(image, MetaTensor) else 0.0
    if cut > CUT_WARNING:
        extent = "x".join(map(str, image.meta.get("extent_mm", [])))
        kept = "x".join(map(str, image.meta.get("kept_mm", [])))
        values = preprocessing.spacing
        spacing = f"{values[0]:g}" if len(set(values)) == 1 else "x".join(f"{v:g}" for v in values)
        what = "the head in this image" if preprocessing.crop_foreground else "this image"
        log.warning(
            "%s%s: at the model's %s mm voxels %s spans %s mm, but the model's input is the "
            "central %s mm (%s voxels, the field of view it was trained on): %.0f%% of the head, outside "
            "that centre, was ignored. Use images like the training ones (same field of view), or train "
            "with a larger --size or a coarser --spacing.",
            paths[0] if paths else "image",
            f" ({where})" if where else "",
            spacing,
            what,
            extent,
            kept,
            "x".join(map(str, preprocessing.size)),
            100 * cut,
        )
    return image


def invert_to_input(
    values: torch.Tensor, preprocessed: MetaTensor, preprocessing: ImagePreprocessing
) -> np.ndarray:
    """Bring an array computed on ``preprocessed``'s grid back to the input's own grid.

    Args:
        values: (C, X, Y, Z) maps or probabilities in the preprocessed space
            (labels: invert their probabilities, then take the argmax).
        preprocessed: the output of :func:`preprocess` for this input.
        preprocessing: the run's preprocessing.

    Returns:
        (C, I, J, K) array in the input's voxel order (same shape as the input file).
    """
    mapped = MetaTensor(
        values.detach().float().cpu(),
        affine=preprocessed.affine.clone(),
        meta={k: v for k, v in preprocessed.meta.items() if k != "affine"},
    )
    mapped.applied_operations = [dict(op) for op in preprocessed.applied_operations]
    inverted = preprocessing.transforms().inverse({"image": mapped})["image"]
    return np.asarray(inverted.detach().cpu().numpy())


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


class VolumeDataset(torch.utils.data.Dataset):
    """Preprocessed volumes and labels; :meth:`subset` gives (augmented) views for training.

    Args:
        items: per image, the list of its channel files.
        labels: class index (or any target) per image.
        preprocessing: the run's deterministic preprocessing.
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
        labels: Sequence[Any],
        preprocessing: ImagePreprocessing,
        *,
        cache: str = "memory",
        cache_dir: Path | None = None,
        cache_budget: int | str = "",
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self.items = [list(i) for i in items]
        self.labels = torch.as_tensor(np.asarray(labels))
        self.preprocessing = preprocessing
        self.store = volume_store(cache, cache_dir, preprocessing.to_dict(), cache_budget)
        self.describe = describe or (lambda i: "")

    def __len__(self) -> int:
        return len(self.items)

    def volume(self, index: int) -> torch.Tensor:
        """The preprocessed (C, X, Y, Z) tensor of one item (cached if enabled)."""
        stored = self.store.load(index, self.items[index], kind="image")
        if stored is not None:
            return stored["image"]
        tensor = (
            preprocess(self.preprocessing, self.items[index], where=self.describe(index))
            .as_tensor()
            .contiguous()
        )
        self.store.save(index, self.items[index], {"image": tensor}, kind="image")
        return tensor

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        """Preprocess every item now (so a bad file stops training before it starts)."""
        for index in range(len(self)):
            self.volume(index)
            if progress is not None:
                progress(index)

    def subset(self, rows: Sequence[int], *, augment: Compose | None = None, seed: int = 0) -> VolumeSubset:
        """A view of some items sharing this dataset's cache, optionally augmented."""
        return VolumeSubset(self, [int(r) for r in rows], augment=augment, seed=seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.volume(index), self.labels[index]


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
            self.augment.set_random_state(seed=(self.seed * 1_000_003 + self.epoch * 10_007 + row) % (2**31))
            image = _plain(self.augment({"image": image})["image"])
        return image, self.base.labels[row]


class ImageBatches:
    """Mini-batches of a :class:`VolumeDataset`, reshuffled each epoch from (seed, epoch).

    In distributed training the engine calls :meth:`shard`: each process then
    iterates over its own part of the same per-epoch order.
    """

    def __init__(
        self, dataset: VolumeDataset, *, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = len(dataset) if batch_size <= 0 else batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.workers = workers
        self.epoch = 0
        self.rank, self.world_size, self.pad = 0, 1, False

    def shard(self, rank: int, world_size: int, *, pad: bool) -> ImageBatches:
        """The batches of process ``rank`` of ``world_size`` (see :func:`~neurodl.engine.batches.process_share`)."""
        sharded = copy.copy(self)
        sharded.rank, sharded.world_size, sharded.pad = rank, world_size, pad
        return sharded

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        rows = len(process_share(range(len(self.dataset)), self.rank, self.world_size, pad=self.pad))
        return math.ceil(rows / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            order = list(range(len(self.dataset)))
        order = process_share(order, self.rank, self.world_size, pad=self.pad)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.workers,
            persistent_workers=False,
        )
        yield from loader


class LabelledVolumeDataset(torch.utils.data.Dataset):
    """Preprocessed images with their label maps (segmentation), cached like :class:`VolumeDataset`.

    Items are (image (C, X, Y, Z), label (1, X, Y, Z) of class indices).
    """

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        masks: Sequence[Path],
        preprocessing: ImagePreprocessing,
        *,
        cache: str = "memory",
        cache_dir: Path | None = None,
        cache_budget: int | str = "",
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self.items = [list(i) for i in items]
        self.masks = list(masks)
        self.preprocessing = preprocessing
        self.store = volume_store(cache, cache_dir, preprocessing.to_dict(), cache_budget)
        self.describe = describe or (lambda i: "")

    def __len__(self) -> int:
        return len(self.items)

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        files = [*self.items[index], self.masks[index]]
        stored = self.store.load(index, files, kind="image+label")
        if stored is not None:
            return stored["image"], stored["label"]
        data = {"image": [str(p) for p in self.items[index]], "label": str(self.masks[index])}
        out = run_pipeline(self.preprocessing.transforms_with_label(), data, self.describe(index))
        pair = (out["image"].as_tensor().contiguous(), out["label"].as_tensor().contiguous())
        self.store.save(index, files, {"image": pair[0], "label": pair[1]}, kind="image+label")
        return pair

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        for index in range(len(self)):
            self.pair(index)
            if progress is not None:
                progress(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pair(index)

    def subset(
        self,
        rows: Sequence[int],
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
        self.random.set_random_state(seed=(self.seed * 1_000_003 + self.epoch * 10_007 + row) % (2**31))
        out = self.random({"image": image, "label": label})
        samples = out if isinstance(out, list) else [out]
        images = torch.stack([_plain(s["image"]) for s in samples])
        labels = torch.stack([_plain(s["label"]) for s in samples])
        return images, labels
