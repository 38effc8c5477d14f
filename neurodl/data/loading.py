"""Loading images with neurodl's checks, as MONAI transforms: channels, a target image, a label map, the head.

The first steps of every preprocessing pipeline (:class:`~neurodl.data.images.ImagePreprocessing`):
files are read by :func:`neurodl.io.nifti.load_volume`, so a missing, truncated or
non-finite file names itself; images read together (channels, an image and its
mask or target) must share a grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from nibabel.orientations import io_orientation

from neurodl.errors import ImageError
from neurodl.io.nifti import load_volume, read_image, require_3d_shape, voxel_size

# The head: voxels brighter than this share of the image's 99th percentile (scanner noise and air are
# darker), without isolated specks.
HEAD_THRESHOLD = 0.1


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
