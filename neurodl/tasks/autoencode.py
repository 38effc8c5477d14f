"""Autoencode: learn a compact code of brain images, reconstruct them, and map what they cannot explain.

A convolutional autoencoder (or VAE) is trained to reproduce preprocessed images
(resampled and resized to a fixed grid, intensity-normalised): whole volumes
(``dims`` 3) or the central axial slices of each volume (``dims`` 2, then encoded
and reconstructed slice by slice). Its code ("latent") is a feature vector per
image; its absolute reconstruction error is an anomaly map, written in the
input's own grid and affine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import AutoencodeOptions
from neurodl.data.batches import ImageBatches
from neurodl.data.images import (
    ImagePreprocessing,
    augmentation,
    invert_to_input,
    preprocess,
)
from neurodl.data.inputs import InputImage
from neurodl.data.volumes import LabelledVolumeDataset, VolumeDataset
from neurodl.engine.memory import require_step_fits
from neurodl.errors import ImageError, UsageError
from neurodl.io.nifti import load_volume, save_volume
from neurodl.models import create_model
from neurodl.tasks import _trained as trained
from neurodl.tasks._driver import Fitted, Recipe, Training, mean_scores, require_known_model, trains
from neurodl.tasks._trained import Failure
from neurodl.tasks.metrics import image_scores

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

TASK = "autoencode"
METRICS = ("mse", "mae", "psnr", "ssim")


def central_slices(depth: int, count: int) -> list[int]:
    """Indices of the ``count`` central slices of an axis of ``depth`` slices."""
    count = min(count, depth)
    start = (depth - count) // 2
    return list(range(start, start + count))


class AutoencodeModule:
    """Model + reconstruction loss (+ beta x KL for a VAE), for the engine.

    Batches are ``(images, _)``: (B, C, X, Y, Z) volumes or (B, C, X, Y) slices,
    matching the model's ``spatial_dims``.
    """

    default_monitor = "val_loss"

    def __init__(self, model: torch.nn.Module, *, loss: str, beta: float) -> None:
        self.model = model
        self.loss_name = loss
        self.beta = beta

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample total loss, reconstruction error and KL divergence (zero for a plain autoencoder)."""
        reconstruction, mu, logvar = self.model(x)
        error = (reconstruction - x).abs() if self.loss_name == "l1" else (reconstruction - x) ** 2
        per_sample = error.flatten(1).mean(dim=1)
        if logvar is not None:
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        else:
            kl = torch.zeros_like(per_sample)
        return {"loss": per_sample + self.beta * kl, "reconstruction": per_sample, "kl": kl}

    def training_step(self, batch: tuple[torch.Tensor, Any]) -> dict[str, torch.Tensor]:
        return {"loss": self.losses(batch[0])["loss"].mean()}

    def validation_step(self, batch: tuple[torch.Tensor, Any]) -> dict[str, torch.Tensor]:
        return self.losses(batch[0])

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            "loss": float(outputs["loss"].mean()),
            "reconstruction": float(outputs["reconstruction"].mean()),
            "kl": float(outputs["kl"].mean()),
        }


class SliceSubset(torch.utils.data.Dataset):
    """The central axial slices of each volume of a subset: (C, X, Y) items for a 2D autoencoder."""

    def __init__(self, volumes: Any, slices: int, depth: int) -> None:
        self.volumes = volumes
        self.indices = central_slices(depth, slices)

    @property
    def epoch(self) -> int:
        return getattr(self.volumes, "epoch", 0)

    @epoch.setter
    def epoch(self, value: int) -> None:
        if hasattr(self.volumes, "epoch"):
            self.volumes.epoch = value

    def __len__(self) -> int:
        return len(self.volumes) * len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        volume, label = self.volumes[index // len(self.indices)]
        return volume[..., self.indices[index % len(self.indices)]], label


def model_spec(options: AutoencodeOptions, channels: int, size: Sequence[int]) -> dict[str, Any]:
    return {
        "name": options.model,
        "dims": options.dims,
        "in_channels": channels,
        "latent_dim": options.latent_dim,
        "width": options.width,
        "size": [int(s) for s in size],
    }


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    dims = int(spec["dims"])
    size = [int(s) for s in spec["size"]][:dims]
    return create_model(
        TASK,
        spec["name"],
        spatial_dims=dims,
        in_channels=int(spec["in_channels"]),
        latent_dim=int(spec["latent_dim"]),
        size=size,
        width=int(spec.get("width", 16)),
    )


def check_model(options: AutoencodeOptions, size: Sequence[int] | None = None) -> None:
    """Refuse an unknown model, or a ``--size`` the network's strides cannot take (before any work)."""
    require_known_model(TASK, options.model)
    if size is None:
        given = options.images.size
        size = (given[0],) * 3 if len(given) == 1 else tuple(given)
    from neurodl.models.autoencoders import SIZE_MULTIPLE

    sides = list(size)[: options.dims] if options.dims == 2 else list(size)
    bad = [s for s in sides if s % SIZE_MULTIPLE]
    if bad:
        fixed = SIZE_MULTIPLE * max(1, round(max(sides) / SIZE_MULTIPLE))
        raise UsageError(
            f"--size {','.join(map(str, size))} does not suit the {options.model} autoencoder: it halves the image "
            f"three times (strides 2,2,2), so each side must be a multiple of {SIZE_MULTIPLE}.",
            f"Use e.g. --size {fixed}.",
        )


def _as_batch(volume: torch.Tensor, dims: int) -> torch.Tensor:
    """(C, X, Y, Z) -> the model's batch: (1, C, X, Y, Z) or (Z, C, X, Y) slices."""
    return volume[None] if dims == 3 else volume.permute(3, 0, 1, 2)


def reconstruct_volume(module: AutoencodeModule, volume: torch.Tensor, dims: int) -> torch.Tensor:
    """Reconstruction (C, X, Y, Z) of a preprocessed volume (slice by slice for a 2D model)."""
    device = next(module.model.parameters()).device
    module.model.eval()
    with torch.no_grad():
        out = module.model(_as_batch(volume, dims).to(device))[0].float().cpu()
    return out[0] if dims == 3 else out.permute(1, 2, 3, 0)


def encode_volume(module: AutoencodeModule, volume: torch.Tensor, dims: int, slices: int) -> np.ndarray:
    """The code of a preprocessed volume (VAE: the mean; 2D: averaged over its central slices)."""
    device = next(module.model.parameters()).device
    module.model.eval()
    if dims == 2:
        volume = volume[..., central_slices(volume.shape[-1], slices)]
    with torch.no_grad():
        encode_mean: Callable[[torch.Tensor], torch.Tensor] = module.model.encode_mean  # type: ignore[assignment]
        codes = encode_mean(_as_batch(volume, dims).to(device)).float().cpu()
    return codes.mean(dim=0).numpy()


def _check_model_early(options: AutoencodeOptions) -> None:
    # A bad model name or --size fails here, before the run directory is created.
    check_model(options, None if options.images.size else (16, 16, 16))


@trains(TASK, AutoencodeOptions, before=_check_model_early)
def train(training: Training) -> dict[str, Any]:
    """Train an autoencoder on the images of a manifest; write the run directory ``out``."""
    options, manifest = training.options, training.manifest
    images = options.images
    training.hold_out_test()
    rows, items = training.rows, training.items
    channels = len(images.image)
    preprocessing = training.plan(fit_spacing=True)
    check_model(options, preprocessing.size)
    spec = model_spec(options, channels, preprocessing.size)
    require_step_fits(  # before any image is decoded or any weight allocated
        lambda: build_model(spec),
        (channels, *preprocessing.size[: options.dims]),
        options.train,
        batch_size=options.train.batch_size or len(rows),
        model_name=options.model,
    )
    base = training.cached(
        VolumeDataset(items, np.zeros(len(items)), preprocessing, **training.cache_options())
    )
    augment = augmentation(images.augment)
    depth = preprocessing.size[2]
    seed = training.seed

    def batches(module: AutoencodeModule, subset_rows: np.ndarray, training_set: bool) -> ImageBatches:
        volumes = base.subset(subset_rows, augment=augment if training_set else None, seed=seed)
        dataset = volumes if options.dims == 3 else SliceSubset(volumes, options.slices, depth)
        size = options.train.batch_size if training_set else max(1, options.train.batch_size)
        return ImageBatches(dataset, batch_size=size, shuffle=training_set, seed=seed, workers=images.workers)

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        scores = []
        for r in subset_rows:
            x = base.volume(int(r))
            scores.append(list(image_scores(x, reconstruct_volume(fitted.module, x, options.dims)).values()))
        return np.asarray(scores, dtype=float).reshape(len(subset_rows), len(METRICS))

    def latent_space(final: Fitted) -> None:
        from neurodl.report import plots as figures

        codes = np.stack(
            [encode_volume(final.module, base.volume(int(r)), options.dims, options.slices) for r in rows]
        )
        colour = options.color_by if options.color_by in manifest.frame.columns else ""
        training.run.save_figure(
            "latent_space.png",
            figures.latent_scatter(
                codes,
                manifest.frame[colour].iloc[rows].fillna("n/a").astype(str).tolist() if colour else None,
                title=f"{options.model} latent space (training + validation images)",
                legend=colour,
            ),
        )

    from neurodl.tasks._samples import training_grid

    record = {
        "model": spec,
        "loss": options.loss,
        "beta": options.beta,
        "slices": options.slices,
        # The grid's real-world affine: samples and interpolations (autoencode_sampling) are written in it.
        "grid_affine": training_grid(preprocessing, items[int(rows[0])]).tolist(),
    }
    return training.train(
        Recipe(
            module=lambda train_rows: AutoencodeModule(
                build_model(spec), loss=options.loss, beta=options.beta
            ),
            batches=batches,
            predict=predict_rows,
            score=mean_scores(METRICS),
            record=lambda final: record,
            title=f"{options.model} autoencoder ({options.dims}D)",
            summary={
                "task": "autoencoder",
                "target": ",".join(images.image),
                "model": options.model,
            },
            headline=lambda name: name in METRICS,
            figures=latent_space,
        )
    )


@dataclass
class LoadedAutoencoder(trained.Trained):
    """A trained autoencoder, ready for new images."""

    module: AutoencodeModule
    dims: int
    latent_dim: int
    slices: int


def load(run_dir: Path, *, device: str = "auto") -> LoadedAutoencoder:
    """Open an autoencode run directory; tampered or foreign runs give a clear error."""

    def read(prep: dict[str, Any], preprocessing: ImagePreprocessing, spec: dict[str, Any]) -> dict[str, Any]:
        dims, latent = int(spec["dims"]), int(spec["latent_dim"])
        if (
            dims not in (2, 3)
            or not 0 < latent <= 65536
            or not 0 < int(spec["in_channels"]) <= 64
            or [int(s) for s in spec["size"]] != list(preprocessing.size)
            or prep.get("loss", "mse") not in ("mse", "l1")
        ):
            raise ValueError("model description out of range")
        beta, slices = float(prep.get("beta", 0.0)), int(prep.get("slices", 8))
        if not (math.isfinite(beta) and beta >= 0 and 0 < slices <= 4096):
            raise ValueError("beta or slices out of range")
        loss = {"loss": str(prep.get("loss", "mse")), "beta": beta}
        return {"dims": dims, "latent_dim": latent, "slices": slices, "module": loss}

    def wrap(model: torch.nn.Module, fields: dict[str, Any]) -> AutoencodeModule:
        return AutoencodeModule(model, **fields["module"])

    return trained.load_trained(run_dir, TASK, LoadedAutoencoder, read, build_model, device, wrap)


def _extra_columns(
    manifest: Any, image: InputImage, image_columns: Sequence[str], row: dict[str, Any]
) -> None:
    if manifest is None or image.row is None:
        return
    extra = manifest.row_values(image.row, skip=image_columns)
    for key, value in extra.items():
        if key not in row and not str(key).startswith("latent_"):
            row[str(key)] = value


def encode(
    loaded: LoadedAutoencoder, inputs: Sequence[Path], **settings: Unpack[trained.BatchSettings]
) -> tuple[pd.DataFrame, list[Failure]]:
    """One row per image: participant_id, image, latent_1..latent_k, then the manifest's other columns."""
    batch = trained.open_batch(loaded, inputs, **settings)

    def encoded(image: InputImage) -> dict[str, Any]:
        x = preprocess(loaded.preprocessing, image.paths, where=image.where).as_tensor()
        code = encode_volume(loaded.module, x, loaded.dims, loaded.slices)
        row: dict[str, Any] = {
            "participant_id": image.participant or image.name,
            "image": os.path.abspath(image.paths[0]),  # the table is read from another folder
        }
        row.update({f"latent_{k + 1}": float(v) for k, v in enumerate(code)})
        _extra_columns(batch.manifest, image, loaded.image_columns, row)
        return row

    rows, failures = batch.each(encoded)
    return pd.DataFrame(rows), failures


def reconstruct(
    loaded: LoadedAutoencoder,
    inputs: Sequence[Path],
    out_dir: Path,
    **settings: Unpack[trained.BatchSettings],
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``<name>_recon.nii.gz`` and ``<name>_error.nii.gz`` (absolute error: the anomaly map) per input.

    Both are in the input's own grid, orientation and affine (the preprocessing is
    inverted), but their intensities stay in the run's normalised units (e.g. z-scores),
    like the error. A PNG (``<name>_error.png``) shows three orthogonal slices of the
    error over the input (unless ``preview`` is False). Outputs already present are kept
    unless ``overwrite``; a bad input is reported and the others still processed.
    """
    batch = trained.open_batch(loaded, inputs, out_dir, **settings)

    def reconstructed(image: InputImage) -> dict[str, Any]:
        recon_path = batch.output(f"{image.name}_recon.nii.gz")
        error_path = batch.output(f"{image.name}_error.nii.gz")
        row: dict[str, Any] = {
            "participant_id": image.participant or image.name,
            "image": str(image.paths[0]),
            "reconstruction": str(recon_path),
            "error": str(error_path),
        }
        if batch.keeps(recon_path, error_path):
            row["status"] = "kept"
            return row
        x = preprocess(loaded.preprocessing, image.paths, where=image.where)
        reconstruction = reconstruct_volume(loaded.module, x.as_tensor(), loaded.dims)
        error = (reconstruction - x.as_tensor().float()).abs()
        in_input = invert_to_input(torch.cat([reconstruction, error]), x, loaded.preprocessing)
        original = load_volume(image.paths[0])
        channels = reconstruction.shape[0]
        if in_input.shape[1:] != original.shape:
            raise ImageError(
                image.paths[0],
                f"internal geometry check failed: reconstruction {in_input.shape[1:]} vs input {original.shape}.",
                "Report this with the file's `neurodl info` output.",
            )
        recon_data, error_data = in_input[:channels], in_input[channels:]
        squeeze = (lambda a: a[0]) if channels == 1 else (lambda a: np.moveaxis(a, 0, -1))
        save_volume(squeeze(recon_data).astype(np.float32), recon_path, like=original)
        save_volume(squeeze(error_data).astype(np.float32), error_path, like=original)
        if settings.get("preview", True):
            from neurodl.report.slices import comparison_slices

            batch.writer.save_figure(
                f"{image.name}_error.png",
                comparison_slices(
                    original,
                    [
                        ("input", original.data, "gray"),
                        ("reconstruction", recon_data[0], "gray"),
                        ("|error|", error_data.mean(axis=0), "hot"),
                    ],
                    title=f"{image.name}: input, reconstruction (normalised units) and error",
                ),
            )
        row["mean_error"] = float(error.mean())
        row["status"] = "written"
        return row

    rows, failures = batch.each(reconstructed)
    return pd.DataFrame(rows), failures


def _preprocess_with_mask(
    loaded: LoadedAutoencoder, image: InputImage, mask_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    values = np.unique(np.asarray(load_volume(mask_path, dtype=None).data))
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise ImageError(
            mask_path, "holds non-integer values; a mask must hold whole numbers.", "Give a label image."
        )
    labelled = replace(loaded.preprocessing, label_values=tuple(sorted({0, *(int(v) for v in values)})))
    dataset = LabelledVolumeDataset(
        [image.paths], [mask_path], labelled, cache="none", describe=lambda _: image.where
    )
    return dataset.pair(0)


def evaluate(
    loaded: LoadedAutoencoder,
    manifest_path: Path,
    *,
    mask_column: str | None = None,
    on_image: Any = None,
    **settings: Unpack[trained.EvaluationSettings],
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """MSE, MAE, PSNR and SSIM per image in the preprocessed (normalised) space, optionally inside a mask."""
    evaluation = trained.open_evaluation(
        loaded,
        manifest_path,
        label=mask_column,
        mask_column=mask_column,
        **settings,
    )

    def scored(image: InputImage) -> dict[str, Any]:
        mask_path = (
            trained.row_mask(evaluation.manifest, manifest_path, image.row, mask_column)
            if mask_column
            else None
        )
        if mask_path is not None:
            x, mask = _preprocess_with_mask(loaded, image, mask_path)
        else:
            x, mask = preprocess(loaded.preprocessing, image.paths, where=image.where).as_tensor(), None
        reconstruction = reconstruct_volume(loaded.module, x, loaded.dims)
        row: dict[str, Any] = {"participant_id": image.participant, "image": str(image.paths[0])}
        row.update(image_scores(x, reconstruction, mask))
        return row

    rows, failures = trained.each_image(evaluation.images, scored, on_image)
    return evaluation.finish(
        rows,
        failures,
        lambda table: {"mask": mask_column or "", **{name: float(table[name].mean()) for name in METRICS}},
    )
