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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import AutoencodeOptions, from_dict, to_dict
from neurodl.data.images import (
    ImageBatches,
    ImagePreprocessing,
    LabelledVolumeDataset,
    VolumeDataset,
    augmentation,
    invert_to_input,
    plan_preprocessing,
    preprocess,
)
from neurodl.data.inputs import InputImage, resolve_inputs
from neurodl.data.splits import split_by_participant
from neurodl.engine import FitResult, fit
from neurodl.engine.memory import require_step_fits
from neurodl.errors import DataError, ImageError, NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.manifest import load_manifest, require_columns
from neurodl.io.nifti import load_volume, save_volume
from neurodl.io.rundir import RunDirectory
from neurodl.models import create_model, list_models
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._run import (
    cache_folder,
    check_leakage,
    check_report_dir,
    held_out_test,
    progress,
    recorded_columns,
    start_run,
    warm_cache,
    write_training_record,
)
from neurodl.tasks.metrics import image_scores

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
    known = [entry.name for entry in list_models(TASK)]
    if options.model not in known:
        raise UsageError(
            f"Unknown autoencode model '{options.model}'.",
            f"Known autoencode models: {', '.join(known)} (see `neurodl models`).",
        )
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


@dataclass
class Fitted:
    module: AutoencodeModule
    result: FitResult


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
        codes = module.model.encode_mean(_as_batch(volume, dims).to(device)).float().cpu()
    return codes.mean(dim=0).numpy()


def fitting_spacing(paths: Sequence[Path], size: Sequence[int]) -> tuple[float, ...]:
    """Voxel size (per RAS axis) at which the images' median field of view fits in ``size``.

    The images' median voxel size, coarsened along any axis whose field of view would
    otherwise be cropped: whole heads are downsampled, not cut. Empty without ``size``.
    """
    if not size:
        return ()
    from neurodl.data.images import header_grid

    spacings, extents = [], []
    for path in paths:
        spacing, shape = header_grid(path)
        spacings.append(spacing)
        extents.append(spacing * shape)
    sides = np.asarray([size[0]] * 3 if len(size) == 1 else list(size), dtype=float)
    fitted = np.maximum(np.median(spacings, axis=0), np.median(extents, axis=0) / sides)
    return tuple(float(np.ceil(s * 1000) / 1000) for s in fitted)


def train(
    manifest_path: Path | None,
    options: AutoencodeOptions,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train an autoencoder on the images of a manifest; write the run directory ``out``."""
    # A bad model name or --size fails here, before the run directory is created.
    check_model(options, None if options.images.size else (16, 16, 16))
    run, manifest_path, saved = start_run(
        out, task=TASK, source=manifest_path, options=to_dict(options), resume=resume, overwrite=overwrite
    )
    options = from_dict(AutoencodeOptions, saved)
    images = options.images
    manifest = load_manifest(
        manifest_path, list(images.image), None, images.participant, bids_filter=images.bids_filter
    )
    groups = np.asarray(manifest.participant_ids, dtype=str)
    seed = options.train.seed
    rows = np.arange(len(manifest))
    test_rows = np.zeros(0, dtype=int)
    strata = np.zeros(len(manifest), dtype=int)
    if options.test_fraction > 0:
        kept, held = split_by_participant(groups, strata, options.test_fraction, seed + 101)
        rows, test_rows = rows[kept], rows[held]
    items = [manifest.image_paths(int(r)) for r in range(len(manifest))]
    channels = len(images.image)
    preprocessing = plan_preprocessing(
        [items[int(r)][0] for r in rows],
        spacing=images.spacing or fitting_spacing([items[int(r)][0] for r in rows], images.size),
        size=images.size,
        normalize=images.normalize,
        crop_foreground=images.crop_foreground,
        channels=channels,
        resize=True,
    )
    check_model(options, preprocessing.size)
    require_step_fits(  # before any image is decoded or any weight allocated
        lambda: build_model(model_spec(options, channels, preprocessing.size)),
        (channels, *preprocessing.size[: options.dims]),
        options.train,
        batch_size=options.train.batch_size or len(rows),
        model_name=options.model,
    )
    base = VolumeDataset(
        items,
        np.zeros(len(items)),
        preprocessing,
        cache=images.cache,
        cache_dir=cache_folder(run, images),
        cache_budget=images.cache_budget,
        describe=lambda i: f"{manifest_path.name} row {i + 1}",
    )
    if images.cache != "none":
        warm_cache(base, console, quiet)
    augment = augmentation(images.augment)
    spec = model_spec(options, channels, preprocessing.size)
    depth = preprocessing.size[2]

    def batches(subset_rows: np.ndarray, *, train_set: bool) -> ImageBatches:
        volumes = base.subset(subset_rows, augment=augment if train_set else None, seed=seed)
        dataset = volumes if options.dims == 3 else SliceSubset(volumes, options.slices, depth)
        size = options.train.batch_size if train_set else max(1, options.train.batch_size)
        return ImageBatches(dataset, batch_size=size, shuffle=train_set, seed=seed, workers=images.workers)  # type: ignore[arg-type]

    def fit_fn(
        train_rows: np.ndarray, val_rows: np.ndarray | None, name: str, description: str, epochs: int | None
    ) -> Fitted:
        train_options = (
            options.train if epochs is None else replace(options.train, epochs=max(1, epochs), patience=0)
        )
        torch.manual_seed(seed)
        module = AutoencodeModule(build_model(spec), loss=options.loss, beta=options.beta)
        with progress(console, quiet, description) as callbacks:
            result = fit(
                module,
                batches(train_rows, train_set=True),
                None if val_rows is None else batches(val_rows, train_set=False),
                train_options,
                checkpoint=run.file(f"checkpoints/{name}.safetensors"),
                resume=resume,
                callbacks=callbacks,
                resume_hint=f"Continue with: neurodl autoencode train --resume --out {run.path}",
            )
        return Fitted(module, result)

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        scores = []
        for r in subset_rows:
            x = base.volume(int(r))
            scores.append(list(image_scores(x, reconstruct_volume(fitted.module, x, options.dims)).values()))
        return np.asarray(scores, dtype=float).reshape(len(subset_rows), len(METRICS))

    def score_rows(subset_rows: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        del subset_rows
        return {name: float(np.mean(scores[:, k])) for k, name in enumerate(METRICS)}

    outcome = run_protocol(
        groups,
        strata,
        rows,
        cv=options.cv,
        val_fraction=options.val_fraction,
        seed=seed,
        fit=fit_fn,
        predict=predict_rows,
        score=score_rows,
        unit="images",
    )
    final: Fitted = outcome.final
    metrics = dict(outcome.metrics)
    headline = dict(outcome.headline)
    evaluation = outcome.evaluation
    if len(test_rows):
        metrics["test"], evaluation = held_out_test(
            run,
            manifest,
            groups,
            test_rows,
            score_rows(test_rows, predict_rows(final, test_rows)),
            evaluation,
        )
        headline = {k: v for k, v in metrics["test"].items() if k in METRICS}

    from neurodl.report import plots as figures
    from neurodl.tasks._samples import training_grid

    run.write_json(
        "preprocessing.json",
        {
            "images": preprocessing.to_dict(),
            "image_columns": list(images.image),
            "participant_column": images.participant,
            "model": spec,
            "loss": options.loss,
            "beta": options.beta,
            "slices": options.slices,
            # The grid's real-world affine: samples and interpolations (autoencode_sampling) are written in it.
            "grid_affine": training_grid(preprocessing, items[int(rows[0])]).tolist(),
        },
    )
    run.save_weights(final.module.model.state_dict())
    write_training_record(
        run,
        outcome,
        metrics,
        participant_column=images.participant,
        groups=groups,
        rows=rows,
        test_rows=test_rows,
    )
    run.save_figure(
        "learning_curves.png",
        figures.learning_curves(outcome.history, title=f"{options.model} autoencoder ({options.dims}D)"),
    )
    codes = np.stack(
        [encode_volume(final.module, base.volume(int(r)), options.dims, options.slices) for r in rows]
    )
    colour = options.color_by if options.color_by in manifest.frame.columns else ""
    run.save_figure(
        "latent_space.png",
        figures.latent_scatter(
            codes,
            manifest.frame[colour].iloc[rows].fillna("n/a").astype(str).tolist() if colour else None,
            title=f"{options.model} latent space (training + validation images)",
            legend=colour,
        ),
    )
    return {
        "task": "autoencoder",
        "target": ",".join(images.image),
        "model": options.model,
        "images": len(manifest),
        "participants": len(set(groups.tolist())),
        "preprocessing": preprocessing.to_dict(),
        "evaluation": evaluation,
        "metrics": headline,
        "metrics_std": outcome.headline_std if not len(test_rows) else {},
        "epochs": final.result.epochs_run,
        "run": str(run.path),
    }


@dataclass
class LoadedAutoencoder:
    """A trained autoencoder, ready for new images."""

    run: RunDirectory
    module: AutoencodeModule
    preprocessing: ImagePreprocessing
    image_columns: list[str]
    participant_column: str
    dims: int
    latent_dim: int
    slices: int
    device: torch.device


def load(run_dir: Path, *, device: str = "auto") -> LoadedAutoencoder:
    """Open an autoencode run directory; tampered or foreign runs give a clear error."""
    from neurodl.engine import resolve_device

    run = RunDirectory.open(run_dir, task=TASK)
    prep = run.read_json("preprocessing.json")
    try:
        preprocessing = ImagePreprocessing.from_dict(prep["images"])
        spec = dict(prep["model"])
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
        image_columns, participant_column = recorded_columns(prep, int(spec["in_channels"]))
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged or names an unknown model ({exc}).",
            "Train the model again.",
        ) from exc
    model = run.load_model(lambda: build_model(spec))
    target = resolve_device(device)
    model.to(target).eval()
    return LoadedAutoencoder(
        run,
        AutoencodeModule(model, loss=str(prep.get("loss", "mse")), beta=beta),
        preprocessing,
        image_columns,
        participant_column,
        dims,
        latent,
        slices,
        target,
    )


@dataclass
class Failure:
    name: str
    message: str


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
    loaded: LoadedAutoencoder, inputs: Sequence[Path], *, shard: str | None = None, on_image: Any = None
) -> tuple[pd.DataFrame, list[Failure]]:
    """One row per image: participant_id, image, latent_1..latent_k, then the manifest's other columns."""
    images, manifest = resolve_inputs(
        inputs, image_columns=loaded.image_columns, participant_column=loaded.participant_column, shard=shard
    )
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    for image in images:
        try:
            x = preprocess(loaded.preprocessing, image.paths, where=image.where).as_tensor()
            code = encode_volume(loaded.module, x, loaded.dims, loaded.slices)
            row: dict[str, Any] = {
                "participant_id": image.participant or image.name,
                "image": os.path.abspath(image.paths[0]),  # the table is read from another folder
            }
            row.update({f"latent_{k + 1}": float(v) for k, v in enumerate(code)})
            _extra_columns(manifest, image, loaded.image_columns, row)
            rows.append(row)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    return pd.DataFrame(rows), failures


def reconstruct(
    loaded: LoadedAutoencoder,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    overwrite: bool = False,
    preview: bool = True,
    shard: str | None = None,
    on_image: Any = None,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``<name>_recon.nii.gz`` and ``<name>_error.nii.gz`` (absolute error: the anomaly map) per input.

    Both are in the input's own grid, orientation and affine (the preprocessing is
    inverted), but their intensities stay in the run's normalised units (e.g. z-scores),
    like the error. A PNG (``<name>_error.png``) shows three orthogonal slices of the
    error over the input. Outputs already present are kept unless ``overwrite``;
    a bad input is reported and the others still processed.
    """
    images, _ = resolve_inputs(
        inputs, image_columns=loaded.image_columns, participant_column=loaded.participant_column, shard=shard
    )
    input_files = {p.resolve() for image in images for p in image.paths}
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    writer = RunDirectory(out_dir, TASK)  # atomic writer for PNG previews
    for image in images:
        recon_path, error_path = (
            out_dir / f"{image.name}_recon.nii.gz",
            out_dir / f"{image.name}_error.nii.gz",
        )
        try:
            if {recon_path.resolve(), error_path.resolve()} & input_files:
                raise OutputError(
                    f"{recon_path}: is also an input; neurodl never overwrites its inputs.",
                    "Choose another -o folder.",
                )
            row: dict[str, Any] = {
                "participant_id": image.participant or image.name,
                "image": str(image.paths[0]),
                "reconstruction": str(recon_path),
                "error": str(error_path),
            }
            if recon_path.exists() and error_path.exists() and not overwrite:
                row["status"] = "kept"
                rows.append(row)
                continue
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
            if preview:
                from neurodl.report.slices import comparison_slices

                writer.save_figure(
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
            rows.append(row)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
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
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
    on_image: Any = None,
    bids_filter: Sequence[str] = (),
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """MSE, MAE, PSNR and SSIM per image in the preprocessed (normalised) space, optionally inside a mask."""
    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    manifest = load_manifest(
        manifest_path,
        loaded.image_columns,
        mask_column,
        loaded.participant_column,
        require_files=False,
        bids_filter=bids_filter,
    )
    if mask_column:
        require_columns(manifest.frame, [mask_column], manifest_path)
        if not manifest.label_is_image or manifest.label_files is None:
            raise UsageError(
                f"{manifest_path}: column '{mask_column}' does not hold mask images (.nii/.nii.gz paths).",
                "Name a column of label images with --mask (e.g. --mask dseg).",
            )
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    images, _ = resolve_inputs(
        [manifest_path],
        image_columns=loaded.image_columns,
        participant_column=loaded.participant_column,
        bids_filter=bids_filter,
    )
    rows, failures = [], []
    for image in images:
        try:
            mask = None
            if mask_column and manifest.label_files is not None and image.row is not None:
                mask_path = manifest.label_files[image.row]
                if mask_path is None:
                    raise DataError(
                        f"{manifest_path}: row {image.row + 1} has no mask in column '{mask_column}'.",
                        "Fill in the mask path.",
                    )
                x, mask = _preprocess_with_mask(loaded, image, Path(mask_path))
            else:
                x = preprocess(loaded.preprocessing, image.paths, where=image.where).as_tensor()
            reconstruction = reconstruct_volume(loaded.module, x, loaded.dims)
            row: dict[str, Any] = {"participant_id": image.participant, "image": str(image.paths[0])}
            row.update(image_scores(x, reconstruction, mask))
            rows.append(row)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    if not rows:
        reasons = "; ".join(f"{f.name}: {f.message}" for f in failures[:3])
        raise DataError(
            f"{manifest_path}: no image could be evaluated ({reasons}).", "Fix the inputs named above."
        )
    per_image = pd.DataFrame(rows)
    metrics: dict[str, Any] = {"images": len(per_image), "mask": mask_column or ""}
    metrics.update({name: float(per_image[name].mean()) for name in METRICS})
    if report_dir is not None and not failures:  # a report that leaves inputs out would mislead
        writer = RunDirectory(report_dir, TASK)
        writer.write_csv("per_image.csv", per_image)
        writer.write_json(
            "metrics.json", {"manifest": str(manifest_path), "model": str(loaded.run.path), **metrics}
        )
    return metrics, per_image, failures, warnings
