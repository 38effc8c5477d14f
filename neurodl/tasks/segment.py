"""Segment: label maps (e.g. CSF / grey matter / white matter) from images, with a 3D U-Net.

Training samples patches from preprocessed volumes; prediction runs MONAI's
sliding-window inference on the whole preprocessed volume, brings the class
probabilities back to the input's own grid (preprocessing inverted) and
writes integer labels with the input's affine, so the mask overlays the
input in any viewer.
"""

from __future__ import annotations

import math
import os
import warnings as warnings_module
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import SegmentOptions
from neurodl.data.batches import ImageBatches
from neurodl.data.images import (
    ImagePreprocessing,
    augmentation,
    invert_to_input,
    preprocess,
)
from neurodl.data.inputs import InputImage
from neurodl.data.volumes import LabelledVolumeDataset
from neurodl.engine.memory import require_step_fits
from neurodl.errors import DataError, ImageError, OutputError, UsageError
from neurodl.io.nifti import Volume, load_volume, save_volume
from neurodl.models import create_model
from neurodl.tasks import _trained as trained
from neurodl.tasks._driver import Fitted, Recipe, Training, require_known_model, trains
from neurodl.tasks._segmentation import (
    LabelTable,
    SegmentModule,
    dice_scores,
    label_table,
    label_volumes,
    mask_dtype,
    mean_of_present,
    millimetres,
    observed_labels,
    parse_labels,
)
from neurodl.tasks._trained import Failure

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

TASK = "segment"


def model_spec(options: SegmentOptions, channels: int, n_classes: int) -> dict[str, Any]:
    return {
        "name": options.model,
        "in_channels": channels,
        "out_channels": n_classes,
        "dropout": options.dropout,
    }


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(TASK, spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def _check_patch(options: SegmentOptions) -> None:
    require_known_model(TASK, options.model)
    probe = build_model({"name": options.model, "in_channels": 1, "out_channels": 2, "dropout": 0.0})
    multiple, minimum = int(getattr(probe, "patch_multiple", 1)), int(getattr(probe, "min_patch", 1))
    bad = [p for p in options.patch_size if p % multiple or p < minimum]
    if bad:
        raise UsageError(
            f"--patch {','.join(map(str, options.patch_size))} does not suit {options.model}: each side must be a multiple of {multiple} and at least {minimum}.",
            f"Use e.g. --patch {max(minimum, multiple * 6)}.",
        )


@trains(TASK, SegmentOptions, before=_check_patch, label=lambda options: options.mask)
def train(training: Training) -> dict[str, Any]:
    """Train a segmenter on the images and masks of a manifest; write the run directory ``out``."""
    options, manifest, source = training.options, training.manifest, training.manifest_path
    images = options.images
    if not manifest.label_is_image or manifest.label_files is None:
        raise UsageError(
            f"{source}: column '{options.mask}' does not hold label images (.nii/.nii.gz paths).",
            "Name the mask column with --mask (e.g. --mask dseg).",
        )
    training.hold_out_test()
    masks = [Path(m) for m in manifest.label_files]  # type: ignore[arg-type]
    labels = label_table(parse_labels(options.labels, manifest.root), observed_labels(masks))
    if len(labels.values) < 2:
        raise DataError(
            f"{source}: the masks in '{options.mask}' are empty (background only).",
            "Check the --mask column.",
        )
    channels = len(images.image)
    preprocessing = training.plan(size=options.patch_size, resize=False, label_values=labels.values)
    spec = model_spec(options, channels, len(labels.values))
    require_step_fits(  # before any image is decoded or any weight allocated
        lambda: build_model(spec),
        (channels, *options.patch_size),
        options.train,
        batch_size=(options.train.batch_size or len(training.rows)) * options.samples_per_image,
        model_name=options.model,
    )
    base = training.cached(
        LabelledVolumeDataset(training.items, masks, preprocessing, **training.cache_options())
    )
    augment = augmentation(images.augment, label=True)
    seed = training.seed

    def module_for(train_rows: np.ndarray) -> SegmentModule:
        return SegmentModule(
            build_model(spec), labels, loss=options.loss, patch=options.patch_size, overlap=options.overlap
        )

    def batches(module: SegmentModule, subset_rows: np.ndarray, training_set: bool) -> ImageBatches:
        if not training_set:  # whole volumes, by sliding windows
            return ImageBatches(base.subset(subset_rows), batch_size=1, shuffle=False, workers=images.workers)
        patches = base.subset(
            subset_rows,
            patch=options.patch_size,
            samples=options.samples_per_image,
            augment=augment,
            seed=seed,
        )
        return ImageBatches(
            patches, batch_size=options.train.batch_size, shuffle=True, seed=seed, workers=images.workers
        )

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        scores = []
        fitted.module.model.eval()
        device = next(fitted.module.model.parameters()).device
        with torch.no_grad():
            for x, y in ImageBatches(base.subset(subset_rows), batch_size=1, shuffle=False):
                probabilities = fitted.module.infer(x.to(device)).cpu()
                scores.append(
                    dice_scores(probabilities.argmax(dim=1, keepdim=True), y, len(labels.values))[0].numpy()
                )
        return np.asarray(scores)

    def score_rows(subset_rows: np.ndarray, dice: np.ndarray) -> dict[str, Any]:
        metrics = {"dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")}
        for k, name in enumerate(labels.foreground):
            metrics[f"dice_{name}"] = (
                float(np.nanmean(dice[:, k])) if np.isfinite(dice[:, k]).any() else float("nan")
            )
        return metrics

    record = {
        "mask_column": options.mask,
        "labels": {"values": list(labels.values), "names": list(labels.names)},
        "patch": list(options.patch_size),
        "overlap": options.overlap,
        "model": spec,
    }
    return training.train(
        Recipe(
            module=module_for,
            batches=batches,
            predict=predict_rows,
            score=score_rows,
            record=lambda final: record,
            title=f"{options.mask}: {options.model}",
            summary={
                "task": "segmentation",
                "target": options.mask,
                "model": options.model,
                "labels": dict(zip(labels.values, labels.names, strict=True)),
            },
            headline=lambda name: name.startswith("dice"),
        )
    )


@dataclass
class LoadedSegmenter(trained.Trained):
    """A trained segmenter, ready for new images."""

    module: SegmentModule
    mask_column: str
    labels: LabelTable


def load(run_dir: Path, *, device: str = "auto", overlap: float | None = None) -> LoadedSegmenter:
    """Open a segment run directory; tampered or foreign runs give a clear error."""

    def read(prep: dict[str, Any], preprocessing: ImagePreprocessing, spec: dict[str, Any]) -> dict[str, Any]:
        labels = LabelTable(
            tuple(int(v) for v in prep["labels"]["values"]), tuple(str(n) for n in prep["labels"]["names"])
        )
        patch = tuple(int(p) for p in prep["patch"])
        recorded_overlap = float(prep.get("overlap", 0.25))
        if (
            not 0 < int(spec["in_channels"]) <= 64
            or int(spec["out_channels"]) != len(labels.values)
            or len(patch) != 3
            or not all(8 <= p <= 512 for p in patch)
            or not 0 <= recorded_overlap < 1
        ):
            raise ValueError("model sizes out of range")
        windows = {"patch": patch, "overlap": recorded_overlap if overlap is None else overlap}
        return {"labels": labels, "mask_column": str(prep.get("mask_column", "dseg")), "module": windows}

    def wrap(model: torch.nn.Module, fields: dict[str, Any]) -> SegmentModule:
        return SegmentModule(model, fields["labels"], loss="dicece", **fields["module"])

    return trained.load_trained(run_dir, TASK, LoadedSegmenter, read, build_model, device, wrap)


def segment_image(
    loaded: LoadedSegmenter, image: InputImage, *, tta: bool = False
) -> tuple[np.ndarray, np.ndarray, Volume]:
    """Label values and class probabilities of one image, both on the input's own grid.

    Returns:
        labels (I, J, K) with the run's label values, probabilities (K, I, J, K), and the input volume.
    """
    x = preprocess(loaded.preprocessing, image.paths, where=image.where)
    with torch.no_grad():
        probabilities = loaded.module.infer(x.as_tensor()[None].to(loaded.device), tta=tta)[0].cpu()
    in_input = invert_to_input(probabilities, x, loaded.preprocessing)
    original = load_volume(image.paths[0])
    if in_input.shape[1:] != original.shape:
        raise ImageError(
            image.paths[0],
            f"internal geometry check failed: prediction {in_input.shape[1:]} vs input {original.shape}.",
            "Report this with the file's `neurodl info` output.",
        )
    values = np.asarray(loaded.labels.values)[in_input.argmax(axis=0)]
    return values, in_input, original


@dataclass
class _Kept:
    """A mask already written: measured, not redone."""

    values: np.ndarray
    affine: np.ndarray


@dataclass
class _Read:
    """An image read and preprocessed, and the input's grid (header only: its voxels are not kept)."""

    x: Any
    like: Volume


def predict(
    loaded: LoadedSegmenter,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    tta: bool = False,
    probabilities: bool = False,
    workers: int = 0,
    **settings: Unpack[trained.BatchSettings],
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``<name>_dseg.nii.gz`` per input (input's grid and affine); return per-image label volumes.

    Outputs already present are kept (and their volumes measured) unless ``overwrite``;
    a bad input is reported and the others still processed. With ``workers`` > 0 the
    batch is pipelined (:func:`neurodl.inference.pipeline.pipelined`): the next images
    are read and preprocessed by that many threads while the model computes, and the
    previous mask is inverted and written behind it; the outputs and their order are
    those of ``workers=0``.
    """
    from neurodl.inference.pipeline import pipelined
    from neurodl.inference.resample import input_grid, labels_on_input_grid, resample_maps, separable_maps
    from neurodl.io.atomic import remove_partial_writes_of
    from neurodl.report.slices import orthogonal_slices

    batch = trained.open_batch(loaded, inputs, out_dir, **settings)
    images, manifest = batch.images, batch.manifest
    lookup: np.ndarray = np.asarray(loaded.labels.values, dtype=mask_dtype(loaded.labels))

    def mask_path(image: InputImage) -> Path:
        return batch.output(f"{image.name}_dseg.nii.gz")

    # Writes of this batch's outputs killed mid-way (SIGKILL, power loss) left temporary files.
    remove_partial_writes_of(
        out_dir / f"{image.name}_{kind}.nii.gz" for image in images for kind in ("dseg", "probseg")
    )

    def read(image: InputImage) -> _Kept | _Read:
        target = mask_path(image)
        if batch.keeps(target):
            existing = load_volume(target, dtype=None)
            return _Kept(existing.data, existing.affine)
        return _Read(
            preprocess(loaded.preprocessing, image.paths, where=image.where), input_grid(image.paths[0])
        )

    def compute(image: InputImage, read_: _Kept | _Read) -> Any:
        if isinstance(read_, _Kept):
            return read_
        with torch.no_grad():
            probs = loaded.module.infer(read_.x.as_tensor()[None].to(loaded.device), tta=tta)[0]
        return read_, probs

    def write(image: InputImage, computed: Any) -> dict[str, Any]:
        target = mask_path(image)
        if isinstance(computed, _Kept):
            values, affine, status = computed.values, computed.affine, "kept"
        else:
            read_, probs = computed
            like = read_.like
            maps = separable_maps(read_.x, like.affine, like.shape)
            in_input = None
            if maps is not None:
                on_grid = probs.float().cpu().numpy()
                index = labels_on_input_grid(on_grid, maps)
                if probabilities:
                    in_input = resample_maps(on_grid, maps)
            else:  # preprocessing with a crop to the head: MONAI's general inverse
                in_input = invert_to_input(probs, read_.x, loaded.preprocessing)
                index = in_input.argmax(axis=0)
            if index.shape != like.shape:
                raise ImageError(
                    image.paths[0],
                    f"internal geometry check failed: prediction {index.shape} vs input {like.shape}.",
                    "Report this with the file's `neurodl info` output.",
                )
            values = lookup[index]
            save_volume(values, target, like=like)
            if probabilities and in_input is not None:
                save_volume(
                    np.moveaxis(in_input, 0, -1).astype(np.float32, copy=False),
                    batch.output(f"{image.name}_probseg.nii.gz"),
                    like=like,
                )
            if settings.get("preview", False):
                batch.writer.save_figure(
                    f"{image.name}_dseg.png",
                    orthogonal_slices(
                        load_volume(image.paths[0]),
                        values,
                        labels=True,
                        title=f"{image.name}: {', '.join(loaded.labels.foreground)}",
                        label_names=dict(zip(loaded.labels.values, loaded.labels.names, strict=True)),
                    ),
                )
            affine, status = like.affine, "written"
        row: dict[str, Any] = {
            "participant_id": image.participant,
            # Absolute: the table is read from another folder than the inputs'.
            "image": os.path.abspath(image.paths[0]),
            "mask": os.path.abspath(target),
            "status": status,
        }
        measured = label_volumes(values, affine, loaded.labels)
        if manifest is not None and image.row is not None:
            extra = manifest.row_values(image.row, skip=loaded.image_columns)
            for key, value in extra.items():
                if key in row or key == "participant_id":
                    continue
                # A manifest column named like a measured volume is kept, renamed, not overwritten.
                row[f"{key}_manifest" if key in measured else key] = value
        row.update(measured)
        return row

    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    for outcome in pipelined(images, read, compute, write, workers=workers):
        if outcome.error is not None:
            failures.append(Failure(outcome.item.name, str(outcome.error)))
        else:
            rows.append(outcome.result)
        on_image = settings.get("on_image")
        if on_image is not None:
            on_image(outcome.item)
    return pd.DataFrame(rows), failures


def merge_volume_tables(existing: pd.DataFrame, table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The volumes table of a resumed or sharded batch: ``existing`` rows updated by ``table``'s, new rows appended.

    Rows are matched on the ``image`` column (absolute paths), so rerunning a batch, or
    the shards of one batch one after the other, build one table.

    Raises:
        OutputError: ``existing`` is not a volumes table, or measures other labels.
    """
    volume_columns = [c for c in table.columns if str(c).endswith("_volume_ml")]
    missing = [c for c in ["image", "mask", *volume_columns] if c not in existing.columns]
    if missing:
        raise OutputError(
            f"{path}: exists but is not a volumes table of this model (no column {', '.join(missing)}).",
            "Choose another --volumes path, or add --overwrite to replace it.",
        )
    updated = existing.set_index("image", drop=False)
    fresh = table.set_index("image", drop=False)
    updated = updated[~updated.index.isin(fresh.index)]
    order = {image: i for i, image in enumerate(existing["image"])}
    merged = pd.concat([updated, fresh], ignore_index=False)
    position = [order.get(image, len(order) + i) for i, image in enumerate(merged["image"])]
    return merged.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)


def evaluate(
    loaded: LoadedSegmenter,
    manifest_path: Path,
    *,
    mask_column: str | None = None,
    tta: bool = False,
    on_image: Any = None,
    **settings: Unpack[trained.EvaluationSettings],
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """Dice and 95th-percentile Hausdorff distance (mm) per label and image, in each input's own grid."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    column = mask_column or loaded.mask_column
    evaluation = trained.open_evaluation(
        loaded,
        manifest_path,
        label=column,
        required=[column],
        image_label=column,
        **settings,
    )
    manifest, warnings = evaluation.manifest, evaluation.warnings
    n = len(loaded.labels.values)
    lookup = {v: i for i, v in enumerate(loaded.labels.values)}
    absent: dict[str, list[str]] = {}  # label name -> images whose truth lacks it

    def measure(image: InputImage) -> dict[str, Any]:
        mask_path = (
            manifest.label_files[image.row]
            if manifest.label_files is not None and image.row is not None
            else None
        )
        if mask_path is None:
            raise DataError(
                f"{manifest_path}: row {image.row + 1 if image.row is not None else '?'} has no mask in column '{column}'.",
                "Fill in the mask path.",
            )
        truth_volume = load_volume(mask_path, dtype=None)
        reference = load_volume(image.paths[0])
        if truth_volume.shape != reference.shape or not np.allclose(
            truth_volume.affine, reference.affine, atol=1e-3
        ):
            raise ImageError(
                mask_path,
                f"is not on the grid of its image {image.paths[0].name} "
                f"(shape {truth_volume.shape}, {truth_volume.orientation}, {millimetres(truth_volume.spacing)} "
                f"vs {reference.shape}, {reference.orientation}, {millimetres(reference.spacing)}).",
                "Resample the mask onto the image first.",
            )
        values, _, original = segment_image(loaded, image, tta=tta)
        truth_values = np.asarray(truth_volume.data).astype(np.int64)
        unknown = sorted(set(np.unique(truth_values).tolist()) - set(lookup))
        if unknown:
            raise ImageError(
                mask_path,
                f"holds label values {unknown[:10]} the model does not know.",
                "Relabel the mask.",
            )
        predicted = torch.from_numpy(np.vectorize(lookup.get)(values))[None, None]
        truth = torch.from_numpy(np.vectorize(lookup.get)(truth_values))[None, None]
        dice = dice_scores(predicted, truth, n)[0].numpy()
        present = set(np.unique(truth.numpy()).tolist())
        with warnings_module.catch_warnings():
            # A label absent from the truth has no distance (MONAI warns, then gives inf/nan):
            # said once for all images below, and written as n/a.
            warnings_module.simplefilter("ignore")
            hd95 = compute_hausdorff_distance(
                one_hot(predicted, n),
                one_hot(truth, n),
                include_background=False,
                percentile=95,
                spacing=list(original.spacing),
            )[0].numpy()
        row: dict[str, Any] = {"participant_id": image.participant, "image": str(image.paths[0])}
        for k, name in enumerate(loaded.labels.foreground):
            missing = k + 1 not in present
            if missing:
                absent.setdefault(name, []).append(image.participant or image.name)
            row[f"dice_{name}"] = math.nan if missing else float(dice[k])
            row[f"hd95_{name}_mm"] = math.nan if missing else float(hd95[k])
        return row

    rows, failures = trained.each_image(evaluation.images, measure, on_image)

    def summarize(per_image: pd.DataFrame) -> dict[str, Any]:
        dice_columns = [c for c in per_image.columns if c.startswith("dice_")]
        metrics = {"dice": mean_of_present(per_image[dice_columns].to_numpy(dtype=float))}
        for c in per_image.columns:
            if c.startswith(("dice_", "hd95_")):
                metrics[c] = mean_of_present(per_image[c].to_numpy(dtype=float))
        if absent:
            described = "; ".join(
                f"{name} from {len(who)} of {len(per_image)} images ({', '.join(map(str, who[:3]))}{', ...' if len(who) > 3 else ''})"
                for name, who in absent.items()
            )
            warnings.append(
                f"labels absent from the truth masks: {described}; their Dice and HD95 are n/a there (left out of the means)."
            )
        return metrics

    return evaluation.finish(rows, failures, summarize)
