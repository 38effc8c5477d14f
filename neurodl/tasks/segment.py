"""Segment: label maps (e.g. CSF / grey matter / white matter) from images, with a 3D U-Net.

Training samples patches from preprocessed volumes; prediction runs MONAI's
sliding-window inference on the whole preprocessed volume, brings the class
probabilities back to the input's own grid (preprocessing inverted) and
writes integer labels with the input's affine, so the mask overlays the
input in any viewer.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings as warnings_module
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from neurodl.config import SegmentOptions, from_dict, to_dict
from neurodl.data.images import (
    ImageBatches,
    ImagePreprocessing,
    LabelledVolumeDataset,
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
from neurodl.io.manifest import load_manifest, read_table, require_columns
from neurodl.io.nifti import Volume, load_volume, save_volume
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

TASK = "segment"


@dataclass(frozen=True)
class LabelTable:
    """Label values (background 0 first) and their names."""

    values: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def foreground(self) -> list[str]:
        return list(self.names[1:])

    def column(self, name: str) -> str:
        """Column name of a label's volume: ``CSF`` -> ``csf_volume_ml``."""
        return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") + "_volume_ml"


def parse_labels(spec: str, manifest_dir: Path) -> dict[int, str]:
    """Label names from ``"1=CSF,2=GM"``, a JSON/TSV lookup table, or the BIDS ``dseg.tsv`` beside the manifest."""
    if not spec:
        default = manifest_dir / "dseg.tsv"
        return parse_labels(str(default), manifest_dir) if default.is_file() else {}
    path = Path(spec)
    if path.suffix.lower() in (".json", ".tsv", ".csv", ".txt") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{path}: label table does not exist.")
        if path.suffix.lower() == ".json":
            payload = json.loads(path.read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in payload.items()}
        frame = read_table(path)
        index = next((c for c in frame.columns if c.lower() in ("index", "value", "label")), None)
        name = next((c for c in frame.columns if c.lower() in ("name", "abbreviation", "label_name")), None)
        if index is None or name is None:
            raise UsageError(
                f"{path}: a label table needs 'index' and 'name' columns (BIDS dseg.tsv); it has {', '.join(frame.columns)}."
            )
        return {int(i): str(n) for i, n in zip(frame[index], frame[name], strict=True)}
    table: dict[int, str] = {}
    for part in spec.split(","):
        key, _, name = part.partition("=")
        try:
            table[int(key.strip())] = name.strip() or f"label_{key.strip()}"
        except ValueError as exc:
            raise UsageError(
                f"--labels '{spec}' is not a list like 1=CSF,2=GM,3=WM nor a label table file."
            ) from exc
    return table


def label_table(named: dict[int, str], observed: set[int]) -> LabelTable:
    values = sorted({0, *observed})
    return LabelTable(
        tuple(values), tuple("background" if v == 0 else named.get(v, f"label_{v}") for v in values)
    )


class SegmentModule:
    """Model + loss + Dice of segmentation, for the engine."""

    default_monitor = "val_dice"

    def __init__(
        self, model: torch.nn.Module, labels: LabelTable, *, loss: str, patch: Sequence[int], overlap: float
    ) -> None:
        from monai.losses import DiceCELoss, DiceLoss

        self.model = model
        self.labels = labels
        self.patch = tuple(patch)
        self.overlap = overlap
        self.loss_name = loss
        self.dice_loss = (
            DiceCELoss(to_onehot_y=True, softmax=True)
            if loss == "dicece"
            else DiceLoss(to_onehot_y=True, softmax=True)
        )

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "ce":
            return F.cross_entropy(logits, target[:, 0].long())
        return self.dice_loss(logits, target)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        if x.ndim == 6:  # (batch, patches per image, C, X, Y, Z)
            x, y = x.flatten(0, 1), y.flatten(0, 1)
        return {"loss": self.loss(self.model(x), y)}

    def infer(self, x: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities of whole volumes by sliding-window inference (optionally flip-averaged)."""
        from monai.inferers import sliding_window_inference

        def run(volume: torch.Tensor) -> torch.Tensor:
            return torch.softmax(
                sliding_window_inference(
                    volume,
                    self.patch,
                    sw_batch_size=4,
                    predictor=self.model,
                    overlap=self.overlap,
                    mode="gaussian",
                ),
                dim=1,
            )

        probabilities = run(x)
        if tta:
            for axis in (2, 3, 4):
                probabilities = probabilities + run(x.flip(axis)).flip(axis)
            probabilities = probabilities / 4
        return probabilities

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        probabilities = self.infer(x)
        loss = F.nll_loss(torch.log(probabilities.clamp_min(1e-8)), y[:, 0].long())
        return {
            "loss": loss[None],
            "dice": dice_scores(probabilities.argmax(dim=1, keepdim=True), y, len(self.labels.values)),
        }

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        dice = outputs["dice"].numpy()
        metrics = {
            "loss": float(outputs["loss"].mean()),
            "dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0,
        }
        for k, name in enumerate(self.labels.foreground):
            column = dice[:, k]
            metrics[f"dice_{name}"] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
        return metrics


def dice_scores(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, K-1) Dice of each foreground class (MONAI); NaN where the class is absent from both."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    return (
        compute_dice(
            one_hot(prediction.long(), n_classes),
            one_hot(truth.long(), n_classes),
            include_background=False,
            ignore_empty=True,
        )
        .float()
        .cpu()
    )


@dataclass
class Fitted:
    module: SegmentModule
    result: FitResult


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
    known = [entry.name for entry in list_models(TASK)]
    if options.model not in known:
        raise UsageError(
            f"Unknown segment model '{options.model}'.",
            f"Known segment models: {', '.join(known)} (see `neurodl models`).",
        )
    probe = build_model({"name": options.model, "in_channels": 1, "out_channels": 2, "dropout": 0.0})
    multiple, minimum = int(getattr(probe, "patch_multiple", 1)), int(getattr(probe, "min_patch", 1))
    bad = [p for p in options.patch_size if p % multiple or p < minimum]
    if bad:
        raise UsageError(
            f"--patch {','.join(map(str, options.patch_size))} does not suit {options.model}: each side must be a multiple of {multiple} and at least {minimum}.",
            f"Use e.g. --patch {max(minimum, multiple * 6)}.",
        )


def _observed_labels(masks: Sequence[Path]) -> set[int]:
    observed: set[int] = set()
    for mask in masks:
        data = load_volume(mask, dtype=None).data
        if data.dtype.kind == "f" and not np.all(data == np.round(data)):
            raise ImageError(
                mask,
                "holds non-integer values; a label map must hold whole numbers.",
                "Give the integer label image (e.g. *_dseg.nii.gz), not probabilities.",
            )
        observed |= {int(v) for v in np.unique(data)}
    if len(observed) > 256:
        raise DataError(
            f"the masks hold {len(observed)} distinct values; that is not a label map.",
            "Check the --mask column.",
        )
    return observed


def train(
    manifest_path: Path | None,
    options: SegmentOptions,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train a segmenter on the images and masks of a manifest; write the run directory ``out``."""
    _check_patch(options)
    run, manifest_path, saved = start_run(
        out, task=TASK, source=manifest_path, options=to_dict(options), resume=resume, overwrite=overwrite
    )
    options = from_dict(SegmentOptions, saved)
    images = options.images
    manifest = load_manifest(
        manifest_path, list(images.image), options.mask, images.participant, bids_filter=images.bids_filter
    )
    if not manifest.label_is_image or manifest.label_files is None:
        raise UsageError(
            f"{manifest_path}: column '{options.mask}' does not hold label images (.nii/.nii.gz paths).",
            "Name the mask column with --mask (e.g. --mask dseg).",
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
    masks = [Path(m) for m in manifest.label_files]  # type: ignore[arg-type]
    labels = label_table(parse_labels(options.labels, manifest.root), _observed_labels(masks))
    if len(labels.values) < 2:
        raise DataError(
            f"{manifest_path}: the masks in '{options.mask}' are empty (background only).",
            "Check the --mask column.",
        )
    channels = len(images.image)
    preprocessing = plan_preprocessing(
        [items[int(r)][0] for r in rows],
        spacing=images.spacing,
        size=options.patch_size,
        normalize=images.normalize,
        crop_foreground=images.crop_foreground,
        channels=channels,
        resize=False,
        label_values=labels.values,
    )
    require_step_fits(  # before any image is decoded or any weight allocated
        lambda: build_model(model_spec(options, channels, len(labels.values))),
        (channels, *options.patch_size),
        options.train,
        batch_size=(options.train.batch_size or len(rows)) * options.samples_per_image,
        model_name=options.model,
    )
    base = LabelledVolumeDataset(
        items,
        masks,
        preprocessing,
        cache=images.cache,
        cache_dir=cache_folder(run, images),
        cache_budget=images.cache_budget,
        describe=lambda i: f"{manifest_path.name} row {i + 1}",
    )
    if images.cache != "none":
        warm_cache(base, console, quiet)
    augment = augmentation(images.augment, label=True)

    def fit_fn(
        train_rows: np.ndarray, val_rows: np.ndarray | None, name: str, description: str, epochs: int | None
    ) -> Fitted:
        train_options = (
            options.train if epochs is None else replace(options.train, epochs=max(1, epochs), patience=0)
        )
        torch.manual_seed(seed)
        module = SegmentModule(
            build_model(model_spec(options, channels, len(labels.values))),
            labels,
            loss=options.loss,
            patch=options.patch_size,
            overlap=options.overlap,
        )
        train_batches = ImageBatches(
            base.subset(
                train_rows,
                patch=options.patch_size,
                samples=options.samples_per_image,
                augment=augment,
                seed=seed,
            ),
            batch_size=options.train.batch_size,
            shuffle=True,
            seed=seed,
            workers=images.workers,
        )
        val_batches = (
            None
            if val_rows is None
            else ImageBatches(base.subset(val_rows), batch_size=1, shuffle=False, workers=images.workers)
        )
        with progress(console, quiet, description) as callbacks:
            result = fit(
                module,
                train_batches,
                val_batches,
                train_options,
                checkpoint=run.file(f"checkpoints/{name}.safetensors"),
                resume=resume,
                callbacks=callbacks,
                resume_hint=f"Continue with: neurodl segment train --resume --out {run.path}",
            )
        return Fitted(module, result)

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
        headline = {k: v for k, v in metrics["test"].items() if k.startswith("dice")}

    from neurodl.report import plots as figures

    spec = model_spec(options, channels, len(labels.values))
    run.write_json(
        "preprocessing.json",
        {
            "images": preprocessing.to_dict(),
            "image_columns": list(images.image),
            "mask_column": options.mask,
            "participant_column": images.participant,
            "labels": {"values": list(labels.values), "names": list(labels.names)},
            "patch": list(options.patch_size),
            "overlap": options.overlap,
            "model": spec,
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
        figures.learning_curves(outcome.history, title=f"{options.mask}: {options.model}"),
    )
    return {
        "task": "segmentation",
        "target": options.mask,
        "model": options.model,
        "labels": dict(zip(labels.values, labels.names, strict=True)),
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
class LoadedSegmenter:
    """A trained segmenter, ready for new images."""

    run: RunDirectory
    module: SegmentModule
    preprocessing: ImagePreprocessing
    image_columns: list[str]
    mask_column: str
    participant_column: str
    labels: LabelTable
    device: torch.device


def load(run_dir: Path, *, device: str = "auto", overlap: float | None = None) -> LoadedSegmenter:
    """Open a segment run directory; tampered or foreign runs give a clear error."""
    from neurodl.engine import resolve_device

    run = RunDirectory.open(run_dir, task=TASK)
    prep = run.read_json("preprocessing.json")
    try:
        preprocessing = ImagePreprocessing.from_dict(prep["images"])
        labels = LabelTable(
            tuple(int(v) for v in prep["labels"]["values"]), tuple(str(n) for n in prep["labels"]["names"])
        )
        spec = dict(prep["model"])
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
        image_columns, participant_column = recorded_columns(prep, int(spec["in_channels"]))
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged or names an unknown model ({exc}).",
            "Train the model again.",
        ) from exc
    model = run.load_model(lambda: build_model(spec))
    target = resolve_device(device)
    model.to(target).eval()
    module = SegmentModule(
        model,
        labels,
        loss="dicece",
        patch=patch,
        overlap=recorded_overlap if overlap is None else overlap,
    )
    return LoadedSegmenter(
        run,
        module,
        preprocessing,
        image_columns,
        str(prep.get("mask_column", "dseg")),
        participant_column,
        labels,
        target,
    )


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


# mL to 3 decimals (1 mm^3): finer than any voxel, and no float noise such as 0.3359999999999999.
VOLUME_DECIMALS = 3


def label_volumes(values: np.ndarray, affine: np.ndarray, labels: LabelTable) -> dict[str, float]:
    """Volume in mL of each foreground label: voxel count x voxel volume, to 3 decimals."""
    # The voxel volume to 1e-6 mm^3, so header float noise cannot tip the rounding below.
    voxel_ml = round(abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))), 6) / 1000.0
    counts = (
        np.bincount(values.ravel(), minlength=max(labels.values) + 1) if values.dtype.kind == "u" else None
    )
    return {
        labels.column(name): round(
            float(counts[value] if counts is not None else np.count_nonzero(values == value)) * voxel_ml,
            VOLUME_DECIMALS,
        )
        for value, name in zip(labels.values[1:], labels.names[1:], strict=True)
    }


@dataclass
class Failure:
    name: str
    message: str


def _mask_dtype(labels: LabelTable) -> type:
    return np.uint8 if max(labels.values) < 256 and min(labels.values) >= 0 else np.int16


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


def _input_grid(path: Path) -> Volume:
    """The input's affine, header and shape, without its voxels (what ``save_volume(like=)`` needs)."""
    from neurodl.io.nifti import read_image

    image = read_image(path)
    shape = tuple(int(n) for n in image.shape[:3])
    # A read-only zero-stride array: the shape of the input at no memory cost.
    return Volume(np.broadcast_to(np.zeros((), np.float32), shape), image.affine, image.header, path)


def predict(
    loaded: LoadedSegmenter,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    tta: bool = False,
    probabilities: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    shard: str | None = None,
    workers: int = 0,
    on_image: Any = None,
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
    from neurodl.inference.resample import labels_on_input_grid, resample_maps, separable_maps
    from neurodl.io.atomic import remove_partial_writes_of
    from neurodl.report.slices import orthogonal_slices

    images, manifest = resolve_inputs(
        inputs, image_columns=loaded.image_columns, participant_column=loaded.participant_column, shard=shard
    )
    input_files = {p.resolve() for image in images for p in image.paths}
    writer = RunDirectory(out_dir, TASK)  # atomic writer for PNG previews
    lookup: np.ndarray = np.asarray(loaded.labels.values, dtype=_mask_dtype(loaded.labels))

    def mask_path(image: InputImage) -> Path:
        return out_dir / f"{image.name}_dseg.nii.gz"

    # Writes of this batch's outputs killed mid-way (SIGKILL, power loss) left temporary files.
    remove_partial_writes_of(
        out_dir / f"{image.name}_{kind}.nii.gz" for image in images for kind in ("dseg", "probseg")
    )

    def read(image: InputImage) -> _Kept | _Read:
        target = mask_path(image)
        if target.resolve() in input_files:
            raise OutputError(
                f"{target}: is also an input; neurodl never overwrites its inputs.",
                "Choose another -o folder.",
            )
        if target.exists() and not overwrite:
            existing = load_volume(target, dtype=None)
            return _Kept(existing.data, existing.affine)
        return _Read(
            preprocess(loaded.preprocessing, image.paths, where=image.where), _input_grid(image.paths[0])
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
                    out_dir / f"{image.name}_probseg.nii.gz",
                    like=like,
                )
            if preview:
                writer.save_figure(
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


def _mm(spacing: tuple[float, ...]) -> str:
    return "x".join(f"{s:g}" for s in spacing) + " mm"


def _mean_of_present(values: np.ndarray) -> float:
    """Mean of the known (not NaN) values; NaN (shown n/a), without numpy's warning, when there are none."""
    known = values[~np.isnan(values)]
    return float(known.mean()) if known.size else math.nan


def evaluate(
    loaded: LoadedSegmenter,
    manifest_path: Path,
    *,
    mask_column: str | None = None,
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
    tta: bool = False,
    on_image: Any = None,
    bids_filter: Sequence[str] = (),
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """Dice and 95th-percentile Hausdorff distance (mm) per label and image, in each input's own grid."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    column = mask_column or loaded.mask_column
    manifest = load_manifest(
        manifest_path,
        loaded.image_columns,
        column,
        loaded.participant_column,
        require_files=False,
        bids_filter=bids_filter,
    )
    require_columns(manifest.frame, [column], manifest_path)
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    images, _ = resolve_inputs(
        [manifest_path],
        image_columns=loaded.image_columns,
        participant_column=loaded.participant_column,
        label_column=column,
        bids_filter=bids_filter,
    )
    n = len(loaded.labels.values)
    lookup = {v: i for i, v in enumerate(loaded.labels.values)}
    rows, failures = [], []
    absent: dict[str, list[str]] = {}  # label name -> images whose truth lacks it
    for image in images:
        try:
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
                    f"(shape {truth_volume.shape}, {truth_volume.orientation}, {_mm(truth_volume.spacing)} "
                    f"vs {reference.shape}, {reference.orientation}, {_mm(reference.spacing)}).",
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
    metrics: dict[str, Any] = {"images": len(per_image)}
    dice_columns = [c for c in per_image.columns if c.startswith("dice_")]
    metrics["dice"] = _mean_of_present(per_image[dice_columns].to_numpy(dtype=float))
    for c in per_image.columns:
        if c.startswith(("dice_", "hd95_")):
            metrics[c] = _mean_of_present(per_image[c].to_numpy(dtype=float))
    if absent:
        described = "; ".join(
            f"{name} from {len(who)} of {len(per_image)} images ({', '.join(map(str, who[:3]))}{', ...' if len(who) > 3 else ''})"
            for name, who in absent.items()
        )
        warnings.append(
            f"labels absent from the truth masks: {described}; their Dice and HD95 are n/a there (left out of the means)."
        )
    if report_dir is not None and not failures:  # a report that leaves inputs out would mislead
        writer = RunDirectory(report_dir, TASK)
        writer.write_csv("per_image.csv", per_image)
        writer.write_json(
            "metrics.json", {"manifest": str(manifest_path), "model": str(loaded.run.path), **metrics}
        )
    return metrics, per_image, failures, warnings
