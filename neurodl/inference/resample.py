"""Maps computed on the preprocessed grid, brought back to the input's grid without MONAI's general inverse.

neurodl's segmentation preprocessing (reorient to RAS, resample, pad) moves
each axis of the input on its own: the preprocessed grid and the input's grid
differ by an axis permutation, flips, a scale and a shift. Trilinear
resampling between such grids is separable, so the inverse is three 1-D
linear interpolations (two gathers and a lerp per axis) instead of a 3-D
``grid_sample`` over every channel, and it samples exactly where MONAI's
inverse samples (``border`` padding, the pad cropped first).

Labels are cheaper still: where the eight preprocessed voxels around an input
voxel all have the same argmax, any convex combination of their probabilities
has that argmax too, so the label is copied; only the other voxels (tissue
boundaries) interpolate the probabilities. The mask is the argmax of the
trilinearly inverted probabilities, as :func:`neurodl.data.images.invert_to_input`
gives it, up to float rounding at exact ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from neurodl.io.nifti import Volume, read_image

# The preprocessing steps this module inverts; anything else (crop to the head,
# resize) goes through MONAI's general inverse.
_SEPARABLE = {"Orientation", "SpatialResample", "Spacing", "SpatialPad"}


@dataclass(frozen=True)
class AxisMap:
    """How one preprocessed axis is sampled along the matching input axis.

    Attributes:
        source: the preprocessed axis (0-2).
        low, high: index of the two preprocessed voxels around each input voxel.
        weight: the weight of ``high`` (float32, 0-1).
    """

    source: int
    low: np.ndarray
    high: np.ndarray
    weight: np.ndarray

    def part(self, start: int, stop: int) -> AxisMap:
        """The map of input voxels ``start:stop`` of this axis."""
        return AxisMap(self.source, self.low[start:stop], self.high[start:stop], self.weight[start:stop])


def separable_maps(
    preprocessed: MetaTensor, input_affine: np.ndarray, input_shape: tuple[int, ...]
) -> list[AxisMap] | None:
    """Per input axis, where the input's voxels fall on the preprocessed grid; None if not separable.

    Args:
        preprocessed: the output of :func:`neurodl.data.images.preprocess` (with its applied operations).
        input_affine: the input file's affine.
        input_shape: the input's 3-D shape.
    """
    operations = list(preprocessed.applied_operations)
    if not operations or any(op.get("class") not in _SEPARABLE for op in operations):
        return None
    pads = [(0, 0)] * 3
    pad_steps = [i for i, op in enumerate(operations) if op.get("class") == "SpatialPad"]
    if pad_steps:
        if pad_steps != [len(operations) - 1]:
            return None  # a pad before the resampling: not what neurodl records
        padded = operations[-1].get("extra_info", {}).get("padded")
        if padded is None or len(padded) != 4:
            return None
        pads = [(int(b), int(a)) for b, a in padded[1:]]
    grid = np.asarray(preprocessed.affine, dtype=np.float64)
    voxel_to_voxel = np.linalg.solve(grid, np.asarray(input_affine, dtype=np.float64))
    shape = preprocessed.shape[1:]
    maps: list[AxisMap] = []
    used: set[int] = set()
    for axis in range(3):
        column = voxel_to_voxel[:3, axis]
        source = int(np.argmax(np.abs(column)))
        scale = column[source]
        if source in used or abs(scale) < 1e-9 or np.abs(np.delete(column, source)).max() > 1e-6 * abs(scale):
            return None  # oblique or degenerate: not a per-axis map
        used.add(source)
        low_edge, high_edge = pads[source][0], shape[source] - pads[source][1] - 1
        if high_edge < low_edge:
            return None
        # MONAI's inverse crops the pad, then samples with "border" padding: clamp to the cropped grid.
        where = np.clip(scale * np.arange(input_shape[axis]) + voxel_to_voxel[source, 3], low_edge, high_edge)
        low = np.minimum(np.floor(where), max(low_edge, high_edge - 1)).astype(np.intp)
        high = np.minimum(low + 1, high_edge)
        maps.append(AxisMap(source, low, high, (where - low).astype(np.float32)))
    return maps


def _in_source_order(maps: list[AxisMap]) -> list[AxisMap]:
    return sorted(maps, key=lambda m: m.source)


def _to_input_order(array: np.ndarray, maps: list[AxisMap], channels: bool) -> np.ndarray:
    """An array in preprocessed axis order -> the input's axis order."""
    order = [m.source for m in maps]
    return np.transpose(array, [0, *(o + 1 for o in order)] if channels else order)


def _interpolate(values: np.ndarray, maps_by_source: list[AxisMap]) -> np.ndarray:
    """Separable trilinear interpolation of (C, X, Y, Z) float32 values, in preprocessed axis order."""
    out = values
    for source, axis in enumerate(maps_by_source):
        low = np.take(out, axis.low, axis=source + 1)
        high = np.take(out, axis.high, axis=source + 1)
        shape = [1] * out.ndim
        shape[source + 1] = -1
        high -= low
        high *= axis.weight.reshape(shape)
        low += high
        out = low
    return out


def resample_maps(values: np.ndarray, maps: list[AxisMap]) -> np.ndarray:
    """(C, X, Y, Z) maps on the preprocessed grid -> (C, I, J, K) float32 on the input's grid (trilinear)."""
    out = _interpolate(np.asarray(values, dtype=np.float32), _in_source_order(maps))
    return np.ascontiguousarray(_to_input_order(out, maps, channels=True))


def _take3(values: np.ndarray, maps_by_source: list[AxisMap]) -> np.ndarray:
    """The value at each input voxel's ``low`` corner, in preprocessed axis order."""
    out = values
    for source, axis in enumerate(maps_by_source):
        out = np.take(out, axis.low, axis=source)
    return out


def argmax_channels(values: np.ndarray) -> np.ndarray:
    """``values.argmax(axis=0)`` as uint8, by comparing whole channels (several times faster for few classes)."""
    best = values[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, values.shape[0]):
        better = values[k] > best  # strict: the first of equal maxima wins, as in argmax
        np.copyto(best, values[k], where=better)
        index[better] = k
    return index


def labels_on_input_grid(probabilities: np.ndarray, maps: list[AxisMap]) -> np.ndarray:
    """Argmax class index (uint8, input's grid) of the trilinearly inverted (K, X, Y, Z) probabilities.

    Copies the label where the 2x2x2 preprocessed voxels around an input voxel agree
    (a convex combination of probabilities that share their argmax keeps it) and
    interpolates the probabilities only inside the box that holds the other voxels.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape[0] > 255:
        return _to_input_order(
            _interpolate(probabilities, _in_source_order(maps)).argmax(axis=0), maps, False
        )
    labels = argmax_channels(probabilities)
    # Cell (x, y, z) holds voxels x..x+1, y..y+1, z..z+1; the far edge repeats its last voxel.
    padded = np.pad(labels, ((0, 1), (0, 1), (0, 1)), mode="edge")
    x, y, z = labels.shape
    uniform = np.ones(labels.shape, dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    uniform &= padded[dx : dx + x, dy : dy + y, dz : dz + z] == labels
    by_source = _in_source_order(maps)
    result = _take3(labels, by_source)
    mixed = ~_take3(uniform, by_source)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mixed.any(axis=tuple(a for a in range(3) if a != axis)))
        if not hit.size:
            return np.ascontiguousarray(_to_input_order(result, maps, channels=False))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    inside = tuple(slice(a, b) for a, b in box)
    interpolated = argmax_channels(
        _interpolate(probabilities, [m.part(a, b) for m, (a, b) in zip(by_source, box, strict=True)])
    )
    np.copyto(result[inside], interpolated, where=mixed[inside])
    return np.ascontiguousarray(_to_input_order(result, maps, channels=False))


def input_grid(path: Path) -> Volume:
    """The input's affine, header and shape, without its voxels (what ``save_volume(like=)`` needs)."""
    image = read_image(path)
    shape = tuple(int(n) for n in image.shape[:3])
    # A read-only zero-stride array: the shape of the input at no memory cost.
    return Volume(np.broadcast_to(np.zeros((), np.float32), shape), image.affine, image.header, path)
