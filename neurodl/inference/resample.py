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

import numpy as np
import torch
from monai.data import MetaTensor

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
    low: torch.Tensor
    high: torch.Tensor
    weight: torch.Tensor


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
    if operations[-1].get("class") == "SpatialPad":
        padded = operations[-1].get("extra_info", {}).get("padded")
        if padded is None or len(padded) != 4:
            return None
        pads = [(int(b), int(a)) for b, a in padded[1:]]
    if sum(op.get("class") == "SpatialPad" for op in operations) > (
        operations[-1].get("class") == "SpatialPad"
    ):
        return None
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
        low = np.minimum(np.floor(where), max(low_edge, high_edge - 1)).astype(np.int64)
        high = np.minimum(low + 1, high_edge)
        maps.append(
            AxisMap(
                source,
                torch.from_numpy(low),
                torch.from_numpy(high),
                torch.from_numpy((where - low).astype(np.float32)),
            )
        )
    return maps


def _interpolate_axis(values: torch.Tensor, dim: int, axis: AxisMap) -> torch.Tensor:
    device = values.device
    low = values.index_select(dim, axis.low.to(device))
    high = values.index_select(dim, axis.high.to(device))
    shape = [1] * values.ndim
    shape[dim] = -1
    return torch.lerp(low, high, axis.weight.to(device).view(shape))


def _input_order(maps: list[AxisMap]) -> list[int]:
    """Permutation from an array in preprocessed axis order to the input's axis order."""
    return [m.source for m in maps]


def resample_maps(values: torch.Tensor, maps: list[AxisMap]) -> torch.Tensor:
    """(C, X, Y, Z) maps on the preprocessed grid -> (C, I, J, K) on the input's grid (trilinear)."""
    by_source = {m.source: m for m in maps}
    out = values
    for source in range(3):
        out = _interpolate_axis(out, source + 1, by_source[source])
    return out.permute(0, *(s + 1 for s in _input_order(maps)))


def _gather_nearest(values: torch.Tensor, maps: list[AxisMap]) -> torch.Tensor:
    """(X, Y, Z) -> the value at each input voxel's ``low`` corner, in preprocessed axis order."""
    by_source = {m.source: m for m in maps}
    out = values
    for source in range(3):
        out = out.index_select(source, by_source[source].low.to(values.device))
    return out


def labels_on_input_grid(probabilities: torch.Tensor, maps: list[AxisMap]) -> torch.Tensor:
    """Argmax class index (int64, input's grid) of the trilinearly inverted (K, X, Y, Z) probabilities.

    Copies the label where the 2x2x2 preprocessed voxels around an input voxel agree
    (their convex combination cannot change the argmax) and interpolates elsewhere.
    """
    labels = probabilities.argmax(dim=0)
    # A cell (x, y, z) holds voxels x..x+1, y..y+1, z..z+1; the last index repeats at the far edge.
    padded = torch.nn.functional.pad(labels[None, None].float(), (0, 1, 0, 1, 0, 1), mode="replicate")[0, 0]
    padded = padded.to(labels.dtype)
    uniform = torch.ones_like(labels, dtype=torch.bool)
    x, y, z = labels.shape
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    uniform &= padded[dx : dx + x, dy : dy + y, dz : dz + z] == labels
    # Where a high corner equals the low one (the far edge) the cell test above still holds:
    # the pad repeated that voxel.
    result = _gather_nearest(labels, maps)
    mixed = ~_gather_nearest(uniform, maps)
    if bool(mixed.any()):
        positions = mixed.nonzero(as_tuple=True)
        by_source = {m.source: m for m in maps}
        total = torch.zeros(
            (probabilities.shape[0], positions[0].numel()),
            dtype=probabilities.dtype,
            device=probabilities.device,
        )
        corner_index = []
        for source in range(3):
            axis = by_source[source]
            where = positions[source]
            corner_index.append(
                (
                    axis.low.to(where.device)[where],
                    axis.high.to(where.device)[where],
                    axis.weight.to(where.device)[where],
                )
            )
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    ix = corner_index[0][dx]
                    iy = corner_index[1][dy]
                    iz = corner_index[2][dz]
                    w = (
                        (corner_index[0][2] if dx else 1 - corner_index[0][2])
                        * (corner_index[1][2] if dy else 1 - corner_index[1][2])
                        * (corner_index[2][2] if dz else 1 - corner_index[2][2])
                    )
                    total += probabilities[:, ix, iy, iz] * w
        result[positions] = total.argmax(dim=0)
    return result.permute(*_input_order(maps))
