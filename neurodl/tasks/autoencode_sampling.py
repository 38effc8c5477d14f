"""New images from an autoencoder: a VAE's samples from its prior, and paths between two images' codes.

A VAE is trained so that codes of real images look like draws from N(0, I); decoding
such draws makes new images. Interpolating linearly between the codes of two images
and decoding each step shows what the model has learned to vary between them (e.g.
the ventricles of a healthy and a demented brain). Both are written in the run's
training grid with its real-world affine; intensities stay in the run's normalised
units (e.g. z-scores), like reconstructions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurodl.data.images import preprocess
from neurodl.errors import NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.rundir import RunDirectory
from neurodl.tasks._samples import contact_sheet, grid_slice_affine, save_in_grid, training_grid
from neurodl.tasks.autoencode import TASK, LoadedAutoencoder, central_slices


def grid_affine(loaded: LoadedAutoencoder) -> np.ndarray:
    """The training grid's affine: recorded in the run, or (older runs) that of its first training image."""
    prep = loaded.run.read_json("preprocessing.json")
    try:
        if "grid_affine" in prep:
            grid = np.asarray(prep["grid_affine"], dtype=float)
        else:
            from neurodl.io.manifest import load_manifest

            source = Path(str(loaded.run.options["input"]))
            manifest = load_manifest(source, loaded.image_columns, None, loaded.participant_column)
            grid = training_grid(loaded.preprocessing, manifest.image_paths(0))
        if grid.shape != (4, 4) or not np.isfinite(grid).all() or abs(np.linalg.det(grid[:3, :3])) < 1e-9:
            raise ValueError("grid affine out of range")
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{loaded.run.path}: the training grid's affine is not recorded, and its training images cannot be read ({exc}).",
            "Train the model again with this version of neurodl (it records the grid).",
        ) from exc
    return grid if loaded.dims == 3 else grid_slice_affine(grid, loaded.preprocessing.size[2] // 2)


def _decode(loaded: LoadedAutoencoder, codes: torch.Tensor) -> np.ndarray:
    """Images (N, X, Y[, Z]) of codes (N, latent), first channel, in the run's normalised units."""
    model: Any = loaded.module.model  # an autoencoder of neurodl.models.autoencoders: has decode()
    model.eval()
    with torch.no_grad():
        images = torch.cat(
            [model.decode(codes[k : k + 8].to(loaded.device)).float().cpu() for k in range(0, len(codes), 8)]
        )
    return images[:, 0].numpy().astype(np.float32)


def _write(
    loaded: LoadedAutoencoder, out_dir: Path, images: np.ndarray, stems: list[str], title: str, sheet: str
) -> pd.DataFrame:
    affine = grid_affine(loaded)
    for image, stem in zip(images, stems, strict=True):
        save_in_grid(image, out_dir / f"{stem}.nii.gz", affine)
    writer = RunDirectory(out_dir, TASK)  # atomic writes
    writer.save_figure(sheet, contact_sheet(list(images), stems, title=title))
    frame = pd.DataFrame({"participant_id": stems, loaded.image_columns[0]: [f"{s}.nii.gz" for s in stems]})
    writer.write_csv(sheet.replace(".png", ".csv"), frame)
    return frame


def _refuse_existing(out_dir: Path, name: str, overwrite: bool) -> None:
    if (out_dir / name).exists() and not overwrite:
        raise OutputError(
            f"{out_dir}: already holds {name}.", "Choose another -o folder, or add --overwrite."
        )


def _require_one_channel(loaded: LoadedAutoencoder, why: str, what: str) -> None:
    if loaded.image_columns[1:]:
        raise UsageError(
            f"{loaded.run.path}: learns {len(loaded.image_columns)} image columns; {why}.",
            f"Train {what} on one --image column.",
        )


def sample(
    loaded: LoadedAutoencoder, out_dir: Path, *, n: int, seed: int = 0, overwrite: bool = False
) -> pd.DataFrame:
    """Decode ``n`` codes drawn from the VAE's prior N(0, I): ``sample-NNN.nii.gz``, samples.csv and samples.png."""
    if not getattr(loaded.module.model, "variational", False):
        raise UsageError(
            f"{loaded.run.path}: is a plain autoencoder; only a VAE has a prior to sample from.",
            "Train with --model vae (then `autoencode sample`), or use `autoencode interpolate` with this run.",
        )
    if n < 1:
        raise UsageError(f"--n must be at least 1, not {n}.")
    _require_one_channel(loaded, "sampling writes single-channel images", "the VAE")
    _refuse_existing(out_dir, "samples.csv", overwrite)
    codes = torch.randn(n, loaded.latent_dim, generator=torch.Generator().manual_seed(seed))
    stems = [f"sample-{k + 1:03d}" for k in range(n)]
    return _write(
        loaded,
        out_dir,
        _decode(loaded, codes),
        stems,
        f"{loaded.run.path.name}: VAE samples from the prior (seed {seed}; normalised units)",
        "samples.png",
    )


def interpolate(
    loaded: LoadedAutoencoder,
    first: Path,
    second: Path,
    out_dir: Path,
    *,
    steps: int = 8,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Decode ``steps`` codes on the line from the code of ``first`` to that of ``second`` (both ends included).

    Writes ``interp-NN.nii.gz``, interpolation.csv and interpolation.png. A 2D model
    interpolates between the central axial slices of the two images.
    """
    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (the two ends), not {steps}.")
    _require_one_channel(loaded, "give the run one image each", "the autoencoder")
    _refuse_existing(out_dir, "interpolation.csv", overwrite)
    codes = []
    model: Any = loaded.module.model
    model.eval()
    for path in (first, second):
        x = preprocess(loaded.preprocessing, [path], where=str(path)).as_tensor()
        batch = x[None] if loaded.dims == 3 else x[..., central_slices(x.shape[-1], 1)].permute(3, 0, 1, 2)
        with torch.no_grad():
            codes.append(model.encode_mean(batch.to(loaded.device)).float().cpu()[0])
    weights = torch.linspace(0, 1, steps)[:, None]
    line = (1 - weights) * codes[0] + weights * codes[1]
    stems = [f"interp-{k:02d}" for k in range(steps)]
    frame = _write(
        loaded,
        out_dir,
        _decode(loaded, line),
        stems,
        f"{loaded.run.path.name}: from {Path(first).name} to {Path(second).name} in {steps} steps (normalised units)",
        "interpolation.png",
    )
    frame["weight_of_second"] = weights[:, 0].numpy()
    RunDirectory(out_dir, TASK).write_csv("interpolation.csv", frame)
    return frame
