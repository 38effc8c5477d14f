"""Translate: synthesise one MRI contrast (or modality) from another with a conditional GAN (pix2pix).

A generator (U-Net) maps the source image to the target image; a PatchGAN
discriminator scores (source, image) pairs patch by patch as real or synthetic.
The generator minimises ``lambda_l1 x L1 + adversarial loss``, the discriminator
its own adversarial loss; each network has its own optimiser (the engine's
``optimizer_groups``). Training uses axial slices (``dims`` 2) or 3D patches;
prediction translates whole volumes (slice by slice, or by sliding windows).

Intensities: the source is normalised per image like every image task; the
target is scaled by a mapping fitted once on the training targets (their 0.5 and
99.5 percentiles to -1 and 1) and recorded in the run, so a synthetic image is
written back in the target modality's own units (e.g. MRI intensity, CT HU),
clipped to the range seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import TranslateOptions
from neurodl.data.batches import ImageBatches
from neurodl.data.images import WHOLE_VOLUME_SIDE, ImagePreprocessing, invert_to_input, preprocess
from neurodl.data.inputs import InputImage
from neurodl.data.loading import LoadTargetd, load_channels
from neurodl.data.volumes import PairedVolumes
from neurodl.engine import Callback
from neurodl.errors import DataError, ImageError, UsageError
from neurodl.io.nifti import Volume, load_volume, save_volume
from neurodl.io.rundir import WEIGHTS_FILE
from neurodl.io.tables import require_columns
from neurodl.tasks import _trained as trained
from neurodl.tasks._driver import Fitted, Recipe, Training, mean_scores, trains
from neurodl.tasks._gan import TargetScale, check_networks
from neurodl.tasks._pix2pix import (
    MIN_WINDOW,
    SIZE_MULTIPLE,
    EpochPreviews,
    Pix2Pix,
    TrainingPatches,
    WholeVolumes,
    build_discriminator,
    build_generator,
    generator_spec,
    plan_roi,
    round_up,
    translate_volume,
)
from neurodl.tasks._trained import Failure
from neurodl.tasks.metrics import image_scores

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

TASK = "translate"
METRICS = ("mae", "psnr", "ssim")
SCORES = (*METRICS, *(f"baseline_{m}" for m in METRICS))


def _target_paths(manifest: Any, manifest_path: Path, column: str, rows: Sequence[int]) -> list[Path]:
    """The target image of each row (absolute), refusing empty cells and non-image columns."""
    paths = []
    for row in rows:
        value = manifest.frame[column].iloc[int(row)]
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"{manifest_path}: row {int(row) + 1} has no target image in column '{column}'.",
                "Fill in the path, or remove the row.",
            )
        if not value.lower().endswith((".nii", ".nii.gz")):
            raise DataError(
                f"{manifest_path}: column '{column}' holds '{value}' (row {int(row) + 1}), not a NIfTI path.",
                "Name the column of target images (.nii/.nii.gz) with --target.",
            )
        path = Path(value) if Path(value).is_absolute() else manifest.root / value
        if not path.exists():
            raise DataError(
                f"{path}: file does not exist ({manifest_path} row {int(row) + 1}).", "Check the path."
            )
        paths.append(path)
    return paths


def _check_columns(options: TranslateOptions) -> None:
    if options.target in options.images.image:
        raise UsageError(
            f"--target '{options.target}' is also a --source column: the model would learn to copy its input.",
            "Name different source and target columns.",
        )


def _check_networks(options: TranslateOptions) -> None:
    check_networks((TASK, options.model), ("discriminator", options.discriminator))


@trains(
    TASK,
    TranslateOptions,
    before=_check_networks,
    check=_check_columns,
    bids_images=lambda options: [options.target],
)
def train(training: Training) -> dict[str, Any]:
    """Train a pix2pix model from source to target images of a manifest; write the run directory ``out``."""
    options, manifest, source = training.options, training.manifest, training.manifest_path
    images = options.images
    require_columns(
        manifest.frame,
        [options.target],
        source,
        fix="Name the column of the images to synthesise with --target (e.g. --target t2).",
    )
    training.hold_out_test()
    items = training.items
    targets = _target_paths(manifest, source, options.target, range(len(manifest)))
    channels = len(images.image)
    # Full-size 1 mm heads come down to about WHOLE_VOLUME_SIDE voxels a side (1.5 mm for a 192 mm
    # field of view): 3-4x fewer voxels a slice and fewer slices; nothing is cropped.
    planned = training.plan(resize=False, fit_within=(WHOLE_VOLUME_SIDE,))
    roi = plan_roi(options, [round_up(s) for s in planned.size])
    # Whole volumes, padded up to the window: nothing is cropped away, any head size works.
    padded = [
        max(round_up(s), r) for s, r in zip(planned.size, [*roi, *planned.size[len(roi) :]], strict=True)
    ]
    preprocessing = training.preprocessing = ImagePreprocessing(
        spacing=planned.spacing,
        size=(padded[0], padded[1], padded[2]),
        normalize=planned.normalize,
        crop_foreground=planned.crop_foreground,
        channels=channels,
        resize=False,
    )
    volumes = training.cached(
        PairedVolumes(
            items, targets, preprocessing, resample=options.resample_target, **training.cache_options()
        ),
        always=True,
    )
    spec = generator_spec(options, channels)
    seed = training.seed

    def module_for(train_rows: np.ndarray) -> Pix2Pix:
        return Pix2Pix(
            build_generator(spec),
            build_discriminator(spec),
            gan_loss=options.gan_loss,
            lambda_l1=options.lambda_l1,
            lr=options.train.lr,
            lr_d=options.lr_d,
            scale=TargetScale.fit([volumes.pair(int(r))[1] for r in train_rows], seed),
            dims=options.dims,
            roi=roi,
        )

    def batches(module: Pix2Pix, subset_rows: np.ndarray, training_set: bool) -> ImageBatches:
        if not training_set:
            return ImageBatches(WholeVolumes(volumes, subset_rows, module.scale), batch_size=1, shuffle=False)
        patches = TrainingPatches(
            volumes, subset_rows, module.scale, dims=options.dims, patch=roi, slices=options.slices, seed=seed
        )
        return ImageBatches(
            patches, batch_size=options.train.batch_size, shuffle=True, seed=seed, workers=images.workers
        )

    def previews(module: Pix2Pix, val_rows: np.ndarray) -> list[Callback]:
        return [EpochPreviews(training.run, module, volumes.pair(int(val_rows[0])), preprocessing.spacing)]

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        scores = []
        for r in subset_rows:
            synthetic, _, _ = synthesize(
                fitted.module.generator, preprocessing, fitted.module.scale, options.dims, roi, items[int(r)]
            )
            real, source_image = real_target(items[int(r)], targets[int(r)], options.resample_target)
            scores.append(score_pair(synthetic, real, source_image))
        return np.asarray([[s[k] for k in SCORES] for s in scores], dtype=float).reshape(
            len(subset_rows), len(SCORES)
        )

    def record(final: Fitted) -> dict[str, Any]:
        return {
            "target_column": options.target,
            "resample_target": options.resample_target,
            "target_scale": final.module.scale.to_dict(),
            "model": spec,
            "window": roi,
        }

    return training.train(
        Recipe(
            module=module_for,
            batches=batches,
            predict=predict_rows,
            score=mean_scores(SCORES),
            record=record,
            weights=lambda final: {
                WEIGHTS_FILE: final.module.generator.state_dict(),
                "discriminator.safetensors": final.module.discriminator.state_dict(),
            },
            title=f"pix2pix {options.model} ({options.dims}D): {','.join(images.image)} -> {options.target}",
            summary={
                "task": "translate",
                "target": f"{','.join(images.image)} -> {options.target}",
                "model": options.model,
            },
            headline=lambda name: name in SCORES,
            callbacks=previews,
            cv=False,  # no cross-validation for GANs: one split, selected on validation MAE
        )
    )


def synthesize(
    generator: torch.nn.Module,
    preprocessing: ImagePreprocessing,
    scale: TargetScale,
    dims: int,
    roi: Sequence[int],
    paths: Sequence[Path],
    where: str = "",
) -> tuple[np.ndarray, Any, Volume]:
    """The synthetic target of one source image, in the source's own grid and the target's units.

    Returns the (I, J, K) array, the preprocessed source and the source volume as loaded.
    """
    x = preprocess(preprocessing, paths, where=where)
    fake = scale.denormalize(translate_volume(generator, x.as_tensor(), dims, roi))
    in_input = invert_to_input(fake, x, preprocessing)[0]
    original = load_volume(paths[0])
    if in_input.shape != original.shape:
        raise ImageError(
            paths[0],
            f"internal geometry check failed: synthetic image {in_input.shape} vs input {original.shape}.",
            "Report this with the file's `neurodl info` output.",
        )
    return in_input.astype(np.float32), x, original


def real_target(paths: Sequence[Path], target: Path, resample: bool) -> tuple[np.ndarray, np.ndarray]:
    """The real target on the source's grid (resampled onto it with ``resample``), and the source's first channel."""
    source = load_channels(paths)
    loaded = LoadTargetd("target", resample)({"image": source, "target": str(target)})["target"]
    return np.asarray(loaded[0].numpy(), dtype=np.float32), np.asarray(source[0].numpy(), dtype=np.float32)


def rescaled_source(source: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The trivial baseline: the source linearly rescaled so its 1-99 % range matches the target's."""
    s_low, s_high = np.percentile(source, [1, 99])
    t_low, t_high = np.percentile(real, [1, 99])
    return ((source - s_low) / max(s_high - s_low, 1e-6) * (t_high - t_low) + t_low).astype(np.float32)


def score_pair(
    synthetic: np.ndarray, real: np.ndarray, source: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, PSNR, SSIM of the synthetic image and of the rescaled-source baseline, against the real target."""
    m = None if mask is None else torch.from_numpy(mask[None].astype(np.float32))
    real_t = torch.from_numpy(real[None])
    ours = image_scores(real_t, torch.from_numpy(synthetic[None]), m)
    baseline = image_scores(real_t, torch.from_numpy(rescaled_source(source, real)[None]), m)
    return {**{k: ours[k] for k in METRICS}, **{f"baseline_{k}": baseline[k] for k in METRICS}}


@dataclass
class LoadedTranslator(trained.Trained):
    """A trained translation model, ready for new images."""

    generator: torch.nn.Module
    scale: TargetScale
    target_column: str
    resample_target: bool
    dims: int
    window: list[int]


def load(run_dir: Path, *, device: str = "auto") -> LoadedTranslator:
    """Open a translate run directory; tampered or foreign runs give a clear error."""

    def read(prep: dict[str, Any], preprocessing: ImagePreprocessing, spec: dict[str, Any]) -> dict[str, Any]:
        dims = int(spec["dims"])
        window = [int(w) for w in prep["window"]]
        if (
            dims not in (2, 3)
            or len(window) != dims
            or any(w < MIN_WINDOW or w % SIZE_MULTIPLE or w > 1024 for w in window)
            or any(w > s for w, s in zip(window, preprocessing.size, strict=False))  # training never does
            or not 0 < int(spec["in_channels"]) <= 64
            or not 0 < int(spec["width"]) <= 512
        ):
            raise ValueError("model description out of range")
        target_column = prep["target_column"]
        # The target column names every output file (<image>_to-<target>): no path separators.
        if (
            not isinstance(target_column, str)
            or not target_column
            or any(c in target_column for c in ("/", "\\", "\0"))
        ):
            raise ValueError("target column out of range")
        return {
            "scale": TargetScale.from_dict(prep["target_scale"]),
            "target_column": target_column,
            "resample_target": bool(prep.get("resample_target", False)),
            "dims": dims,
            "window": window,
        }

    return trained.load_trained(
        run_dir, TASK, LoadedTranslator, read, build_generator, device, network="generator"
    )


def _synthesize(loaded: LoadedTranslator, image: InputImage) -> tuple[np.ndarray, Any, Volume]:
    """:func:`synthesize` with a loaded model."""
    return synthesize(
        loaded.generator,
        loaded.preprocessing,
        loaded.scale,
        loaded.dims,
        loaded.window,
        image.paths,
        image.where,
    )


def predict(
    loaded: LoadedTranslator, inputs: Sequence[Path], out_dir: Path, **settings: Unpack[trained.BatchSettings]
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``<name>_to-<target>.nii.gz`` per input: the synthetic image, in the input's grid and affine.

    Intensities are in the target modality's units. With ``preview`` a PNG shows the
    source, the synthetic image and (for manifest rows that have it) the real target.
    Outputs already present are kept unless ``overwrite``; a bad input is reported
    and the others still processed.
    """
    batch = trained.open_batch(loaded, inputs, out_dir, **settings)
    suffix = f"_to-{loaded.target_column}"

    def translated(image: InputImage) -> dict[str, Any]:
        path = batch.output(f"{image.name}{suffix}.nii.gz")
        row: dict[str, Any] = {
            "participant_id": image.participant or image.name,
            "image": str(image.paths[0]),
            "synthetic": str(path),
        }
        if batch.keeps(path):
            row["status"] = "kept"
            return row
        synthetic, _, original = _synthesize(loaded, image)
        save_volume(synthetic, path, like=original)
        if settings.get("preview", False):
            from neurodl.report.slices import comparison_slices

            panels = [("source", original.data, "gray"), ("synthetic", synthetic, "gray")]
            real_path = _manifest_target(batch.manifest, image.row, loaded.target_column)
            if real_path is not None:
                real, _ = real_target(image.paths, real_path, loaded.resample_target)
                panels.append(("real", real, "gray"))
            batch.writer.save_figure(
                f"{image.name}{suffix}.png",
                comparison_slices(
                    original,
                    panels,
                    title=f"{image.name}: source, synthetic {loaded.target_column}"
                    + (" and real (same grey scale)" if real_path is not None else ""),
                    same_scale=(2, 1) if real_path is not None else (),
                ),
            )
        row["status"] = "written"
        return row

    rows, failures = batch.each(translated)
    return pd.DataFrame(rows), failures


def _manifest_target(manifest: Any, row: int | None, column: str) -> Path | None:
    if manifest is None or row is None or column not in manifest.frame.columns:
        return None
    value = manifest.frame[column].iloc[row]
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value) if Path(value).is_absolute() else manifest.root / value
    return path if path.exists() else None


def evaluate(
    loaded: LoadedTranslator,
    manifest_path: Path,
    *,
    mask_column: str | None = None,
    on_image: Any = None,
    **settings: Unpack[trained.EvaluationSettings],
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """MAE, PSNR and SSIM per image of the synthetic vs the real target, in the source's grid and the target's units.

    Also scores the trivial baseline (the source rescaled to the target's range) the same way.
    """
    evaluation = trained.open_evaluation(
        loaded,
        manifest_path,
        label=mask_column,
        required=[loaded.target_column],
        fix=f"The model synthesises '{loaded.target_column}' images: give a manifest with that column of real targets.",
        mask_column=mask_column,
        bids_images=[loaded.target_column],
        **settings,
    )
    manifest = evaluation.manifest

    def scored(image: InputImage) -> dict[str, Any]:
        assert image.row is not None
        target_path = _target_paths(manifest, manifest_path, loaded.target_column, [image.row])[0]
        synthetic, _, original = _synthesize(loaded, image)
        real, source = real_target(image.paths, target_path, loaded.resample_target)
        mask_path = trained.row_mask(manifest, manifest_path, image.row, mask_column) if mask_column else None
        mask = None
        if mask_path is not None:
            mask_volume = load_volume(mask_path, dtype=None)
            if mask_volume.shape != original.shape or not np.allclose(
                mask_volume.affine, original.affine, atol=1e-3
            ):
                raise ImageError(
                    mask_path,
                    f"has shape {mask_volume.shape} and orientation {mask_volume.orientation}, but its image has {original.shape} and {original.orientation}; a mask must share its image's grid.",
                    "Resample the mask onto the image with nearest-neighbour interpolation first.",
                )
            mask = np.asarray(mask_volume.data) > 0
        row: dict[str, Any] = {
            "participant_id": image.participant,
            "image": str(image.paths[0]),
            "target": str(target_path),
        }
        row.update(score_pair(synthetic, real, source, mask))
        return row

    rows, failures = trained.each_image(evaluation.images, scored, on_image)
    return evaluation.finish(
        rows,
        failures,
        lambda table: {
            "mask": mask_column or "",
            "units": loaded.target_column,
            **{name: float(table[name].mean()) for name in SCORES},
        },
    )
