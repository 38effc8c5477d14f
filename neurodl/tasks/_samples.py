"""Writing images a model made from scratch (GAN or VAE samples): in the training grid, and as a contact sheet.

Such images have no input whose grid they could take: they are written in the grid
the model was trained on (RAS, the run's spacing and size) with the real-world
affine of a preprocessed training image, recorded in the run as ``grid_affine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neurodl.io.nifti import Volume


def grid_slice_affine(affine: np.ndarray, z: int) -> np.ndarray:
    """The affine of axial slice ``z`` of a grid, as a one-slice volume."""
    moved = np.array(affine, dtype=float)
    moved[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(z)]) + affine[:3, 3]
    return moved


def grid_volume(data: np.ndarray, affine: np.ndarray) -> Volume:
    """``data`` placed in the training grid (RAS, the run's spacing, a real-world origin), in mm."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    return Volume(data=data, affine=np.asarray(affine, dtype=float), header=header)


def contact_sheet(images: Sequence[np.ndarray], names: Sequence[str], *, title: str, columns: int = 6) -> Any:
    """A grid of axial views (the central slice of volumes), one grey scale for all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = [np.asarray(a[..., a.shape[-1] // 2] if a.ndim == 3 else a) for a in images]
    low, high = (float(v) for v in np.percentile(np.concatenate([p.ravel() for p in planes]), [1, 99.5]))
    columns = max(1, min(columns, len(planes)))
    rows = int(np.ceil(len(planes) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(planes):
            ax.imshow(np.rot90(planes[k]), cmap="gray", vmin=low, vmax=high)
            ax.set_title(names[k], fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def save_in_grid(image: np.ndarray, path: Any, affine: np.ndarray) -> None:
    """Write a generated volume (X, Y, Z), or a slice (X, Y) as a one-slice volume, with the grid's affine."""
    from neurodl.io.nifti import save_volume

    data = image if image.ndim == 3 else image[..., None]
    save_volume(data, path, like=grid_volume(data, affine))


def training_grid(preprocessing: Any, paths: Sequence[Any]) -> np.ndarray:
    """The real-world affine of the training grid: that of one training image after preprocessing."""
    from neurodl.data.images import preprocess

    return np.asarray(preprocess(preprocessing, list(paths)).affine, dtype=float)
