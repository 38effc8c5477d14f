"""Three orthogonal slices of a volume, optionally with a map or labels over it."""

from __future__ import annotations

from typing import Any

import numpy as np

from neurodl.io.nifti import Volume, to_ras
from neurodl.report.plots import plt


def _ras(data: np.ndarray, like: Volume) -> np.ndarray:
    return to_ras(Volume(data=data, affine=like.affine, header=like.header)).data


def orthogonal_slices(
    image: Volume,
    overlay: np.ndarray | None = None,
    *,
    title: str = "",
    labels: bool = False,
    centre: tuple[int, int, int] | None = None,
    label_names: dict[int, str] | None = None,
) -> Any:
    """Sagittal, coronal and axial slices (displayed in RAS, anatomy upright).

    Args:
        image: the input volume (any orientation).
        overlay: a map (heat colours) or a label image (``labels=True``) on ``image``'s grid.
        title: figure title.
        labels: draw ``overlay`` as discrete labels.
        centre: voxel (in RAS order) the slices go through; default the overlay's maximum or the centre.
        label_names: names of the label values, for the colour legend of a label image
            (default: the values themselves).
    """
    base = _ras(np.asarray(image.data, dtype=np.float32), image)
    top = _ras(np.asarray(overlay, dtype=np.float32), image) if overlay is not None else None
    if centre is None:
        if top is not None and not labels and np.isfinite(top).any() and top.max() > top.min():
            centre = tuple(int(i) for i in np.unravel_index(int(np.nanargmax(top)), top.shape))  # type: ignore[assignment]
        else:
            centre = tuple(s // 2 for s in base.shape)  # type: ignore[assignment]
    assert centre is not None
    ras_spacing = np.asarray(
        to_ras(
            Volume(data=np.zeros(image.shape[:3], dtype=np.uint8), affine=image.affine, header=image.header)
        ).spacing
    )
    low, high = np.percentile(base, [1, 99]) if base.size else (0, 1)
    if top is not None and not labels:
        finite = top[np.isfinite(top)]
        low_map, high_map = (
            (float(np.percentile(finite, 60)), float(finite.max())) if finite.size else (0.0, 1.0)
        )
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    views = [("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1))]
    for ax, (name, axis, (a, b)) in zip(axes, views, strict=True):
        index: list[slice | int] = [slice(None)] * 3
        index[axis] = centre[axis]
        ax.imshow(
            base[tuple(index)].T,
            cmap="gray",
            origin="lower",
            vmin=low,
            vmax=high,
            aspect=ras_spacing[b] / ras_spacing[a],
        )
        if top is not None:
            layer = top[tuple(index)].T
            if labels:
                ax.imshow(
                    np.ma.masked_where(layer == 0, layer),
                    cmap="tab10",
                    origin="lower",
                    alpha=0.45,
                    vmin=0,
                    vmax=9,
                    interpolation="nearest",
                    aspect=ras_spacing[b] / ras_spacing[a],
                )
            else:
                # Only the upper part of the map is drawn, so the anatomy under it stays visible.
                ax.imshow(
                    np.ma.masked_where(layer < low_map, layer),
                    cmap="hot",
                    origin="lower",
                    alpha=0.5,
                    vmin=low_map,
                    vmax=high_map,
                    aspect=ras_spacing[b] / ras_spacing[a],
                )
        ax.set_title(name)
        ax.axis("off")
    legend = top is not None and labels and _label_legend(fig, top, label_names or {})
    if title:
        fig.suptitle(title)
    # Room at the bottom for the label legend.
    fig.tight_layout(rect=(0, 0.08, 1, 1) if legend else None)
    return fig


def _label_legend(fig: Any, labels: np.ndarray, names: dict[int, str]) -> bool:
    """One colour patch per label value present (the colours of the overlay's tab10 map)."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10")
    scale = Normalize(vmin=0, vmax=9)
    present = [int(v) for v in np.unique(labels[np.isfinite(labels)]) if v != 0]
    if not present:
        return False
    handles = [
        Patch(facecolor=colours(scale(v)), alpha=0.7, label=str(names.get(v, f"label {v}"))) for v in present
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    return True


def comparison_slices(
    image: Volume,
    panels: list[tuple[str, np.ndarray, str]],
    *,
    title: str = "",
    same_scale: tuple[int, ...] = (),
) -> Any:
    """One row of sagittal, coronal and axial slices per panel, all through the same voxel.

    Args:
        image: gives the grid (affine) of every panel; its centre is where the slices cross.
        panels: (row label, array on ``image``'s grid, matplotlib colormap), e.g.
            input / reconstruction in ``gray`` and the error in ``hot``. Each row is
            windowed on its own 1st-99th percentiles (the arrays may have different units).
        title: figure title.
        same_scale: rows (indices) drawn with one window, that of the first of them (e.g. a
            synthetic image on the real one's scale, so an intensity error shows).
    """
    ras = [(label, _ras(np.asarray(data, dtype=np.float32), image), cmap) for label, data, cmap in panels]
    centre = tuple(s // 2 for s in ras[0][1].shape)
    ras_spacing = np.asarray(
        to_ras(
            Volume(data=np.zeros(image.shape[:3], dtype=np.uint8), affine=image.affine, header=image.header)
        ).spacing
    )
    fig, axes = plt.subplots(len(ras), 3, figsize=(10, 3.3 * len(ras)), squeeze=False)
    views = [("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1))]
    windows = [np.percentile(data, [1, 99]) if data.size else (0.0, 1.0) for _, data, _ in ras]
    for row in same_scale[1:]:
        windows[row] = windows[same_scale[0]]
    for row, (label, data, cmap) in enumerate(ras):
        low, high = windows[row]
        for column, (name, axis, (a, b)) in enumerate(views):
            index: list[Any] = [slice(None)] * 3
            index[axis] = centre[axis]
            ax = axes[row, column]
            ax.imshow(
                data[tuple(index)].T,
                cmap=cmap,
                origin="lower",
                vmin=low,
                vmax=high if high > low else low + 1,
                aspect=ras_spacing[b] / ras_spacing[a],
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if column == 0:
                ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
