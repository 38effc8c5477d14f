"""Image preprocessing recorded in the run, applied to new images and inverted on output.

Preprocessing is a MONAI pipeline: load (with neurodl's checks) -> reorient to
RAS -> resample to ``spacing`` -> optionally crop to the head -> pad/crop to
``size`` -> normalise intensities. Its parameters are saved in the run's
``preprocessing.json`` so ``predict`` applies exactly the same, and MONAI's
invertible transforms bring any map computed in that space back to the
input's own grid and affine.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
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

from neurodl.data.intensity import NormalizeNonzerod
from neurodl.data.loading import (
    HEAD_THRESHOLD,
    FieldOfViewCheckd,
    HeadMask,
    LoadChannelsd,
    LoadLabeld,
    LoadTargetd,
    head_mask,
    header_grid,
    ras_spacing_and_shape,
)
from neurodl.errors import ImageError, UsageError
from neurodl.io.nifti import load_volume

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
# Heads measured (voxels read) to plan the crop: enough to see their spread, few enough to be quick.
PLANNING_SAMPLE = 6
# A share of the head cut off by the input's field of view worth telling the user about.
CUT_WARNING = 0.01


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
            Spacingd(keys=keys, pixdim=self.spacing, mode=modes, dtype=torch.float32),  # type: ignore[arg-type]
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


def fitting_spacing(paths: Sequence[Path], size: Sequence[int]) -> tuple[float, ...]:
    """Voxel size (per RAS axis) at which the images' median field of view fits in ``size``.

    The images' median voxel size, coarsened along any axis whose field of view would
    otherwise be cropped: whole heads are downsampled, not cut. Empty without ``size``.
    """
    if not size:
        return ()
    spacings, extents = [], []
    for path in paths:
        spacing, shape = header_grid(path)
        spacings.append(spacing)
        extents.append(spacing * shape)
    sides = np.asarray([size[0]] * 3 if len(size) == 1 else list(size), dtype=float)
    fitted = np.maximum(np.median(spacings, axis=0), np.median(extents, axis=0) / sides)
    return tuple(float(np.ceil(s * 1000) / 1000) for s in fitted)


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
