"""Classify: "is this subject healthy?" from the image itself, with a 3D CNN.

Preprocessing (RAS, spacing, size, normalisation) is planned on the training
images, recorded in the run and re-applied by ``predict``; interpretation
maps are computed in that space and brought back to each input's own grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import ClassifyOptions, from_dict, to_dict
from neurodl.data.images import (
    ImageBatches,
    ImagePreprocessing,
    VolumeDataset,
    augmentation,
    invert_to_input,
    plan_preprocessing,
    preprocess,
)
from neurodl.data.inputs import InputImage, resolve_inputs
from neurodl.data.splits import split_by_participant
from neurodl.data.tabular import TargetEncoder, label_text
from neurodl.engine import FitResult, fit
from neurodl.errors import DataError, NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.manifest import load_manifest, require_columns
from neurodl.io.nifti import load_volume, save_volume
from neurodl.io.rundir import RunDirectory
from neurodl.models import create_model, list_models
from neurodl.tasks._classification import (
    balanced_class_weights,
    class_probabilities,
    classification_loss,
    n_outputs,
    save_classification_plots,
)
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._run import (
    cache_folder,
    check_leakage,
    check_report_dir,
    progress,
    recorded_columns,
    start_run,
    warm_cache,
    write_held_out_manifest,
    write_training_record,
)
from neurodl.tasks.metrics import classification_metrics, epoch_classification_metrics

TASK = "classify"
METHODS = ("gradcam", "saliency", "occlusion")


class ClassifyModule:
    """Model + loss + metrics of image classification, for the engine."""

    default_monitor = "val_loss"

    def __init__(self, model: torch.nn.Module, class_weights: torch.Tensor | None = None) -> None:
        self.model = model
        self.class_weights = class_weights

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": classification_loss(self.model(x), y, self.class_weights)}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"output": self.model(x), "target": y}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        output, y = outputs["output"], outputs["target"].long()
        return {
            "loss": float(classification_loss(output, y, self.class_weights)),
            **epoch_classification_metrics(y.numpy(), class_probabilities(output)),
        }

    @torch.no_grad()
    def predict(self, batches: Any) -> np.ndarray:
        """Class probabilities (n, K) for every batch of ``batches``."""
        self.model.eval()
        device = next(self.model.parameters()).device
        outputs = [self.model(x.to(device)).float().cpu() for x, _ in batches]
        return class_probabilities(torch.cat(outputs))


@dataclass
class Fitted:
    module: ClassifyModule
    result: FitResult


def model_spec(options: ClassifyOptions, channels: int, n_classes: int) -> dict[str, Any]:
    return {
        "name": options.model,
        "in_channels": channels,
        "out_features": n_outputs(n_classes),
        "depth": options.depth,
        "width": options.width,
        "dropout": options.dropout,
    }


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(TASK, spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def train(
    manifest_path: Path | None,
    options: ClassifyOptions,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train a classifier on the images of a manifest and write the run directory ``out``.

    ``test_fraction`` holds out participants that are never trained or
    selected on; they are scored at the end and written to ``test_manifest.tsv``
    for ``evaluate``. The rest is split (or cross-validated) by
    :func:`neurodl.tasks._protocol.run_protocol`.
    """
    known = [entry.name for entry in list_models(TASK)]
    if options.model not in known:
        raise UsageError(
            f"Unknown classify model '{options.model}'.",
            f"Known classify models: {', '.join(known)} (see `neurodl models`).",
        )
    run, manifest_path, saved = start_run(
        out, task=TASK, source=manifest_path, options=to_dict(options), resume=resume, overwrite=overwrite
    )
    options = from_dict(ClassifyOptions, saved)
    images = options.images
    manifest = load_manifest(
        manifest_path, list(images.image), options.label, images.participant, bids_filter=images.bids_filter
    )
    if manifest.label_is_image:
        raise UsageError(
            f"{manifest_path}: column '{options.label}' holds images; classify needs a class label.",
            "Use `neurodl segment` for masks, or name the class column with --label.",
        )
    target = TargetEncoder.fit(
        manifest.frame[options.label],
        name=options.label,
        kind="classification",
        positive=options.positive,
        path=manifest_path,
    )
    y = target.encode(manifest.frame[options.label], path=manifest_path)
    groups = np.asarray(manifest.participant_ids, dtype=str)
    seed = options.train.seed
    rows = np.arange(len(manifest))
    test_rows = np.zeros(0, dtype=int)
    if options.test_fraction > 0:
        kept, held = split_by_participant(groups, y, options.test_fraction, seed + 101)
        rows, test_rows = rows[kept], rows[held]
    channels = len(images.image)
    items = [manifest.image_paths(int(r)) for r in range(len(manifest))]
    preprocessing = plan_preprocessing(
        [items[int(r)][0] for r in rows],
        spacing=images.spacing,
        size=images.size,
        normalize=images.normalize,
        crop_foreground=images.crop_foreground,
        channels=channels,
    )
    base = VolumeDataset(
        items,
        y,
        preprocessing,
        cache=images.cache,
        cache_dir=cache_folder(run, images),
        describe=lambda i: f"{manifest_path.name} row {i + 1}",
    )
    if images.cache != "none":
        warm_cache(base, console, quiet)
    augment = augmentation(images.augment)

    def fit_fn(
        train_rows: np.ndarray, val_rows: np.ndarray | None, name: str, description: str, epochs: int | None
    ) -> Fitted:
        train_options = (
            options.train if epochs is None else replace(options.train, epochs=max(1, epochs), patience=0)
        )
        torch.manual_seed(seed)
        spec = model_spec(options, channels, len(target.classes))
        weights = (
            balanced_class_weights(y[train_rows], len(target.classes))
            if options.class_weight == "balanced"
            else None
        )
        module = ClassifyModule(build_model(spec), weights)
        train_batches = ImageBatches(
            base.subset(train_rows, augment=augment, seed=seed),
            batch_size=options.train.batch_size,
            shuffle=True,
            seed=seed,
            workers=images.workers,
        )
        val_batches = (
            None
            if val_rows is None
            else ImageBatches(
                base.subset(val_rows),
                batch_size=options.train.batch_size,
                shuffle=False,
                workers=images.workers,
            )
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
                resume_hint=f"Continue with: neurodl classify train --resume --out {run.path}",
            )
        return Fitted(module, result)

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        return fitted.module.predict(
            ImageBatches(base.subset(subset_rows), batch_size=8, shuffle=False, workers=images.workers)
        )

    def score_rows(subset_rows: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        return classification_metrics(y[subset_rows], outputs, target.classes)

    outcome = run_protocol(
        groups,
        y,
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
    spec = model_spec(options, channels, len(target.classes))
    prefix = "oof_" if options.cv else "validation_"
    frame = manifest.frame
    _write_predictions(run, prefix, frame, manifest, outcome.rows, outcome.outputs, target)
    scored = outcome.metrics["out_of_fold"] if options.cv else outcome.metrics["validation"]
    plots = save_classification_plots(
        run, prefix, y[outcome.rows], outcome.outputs, target.classes, scored["confusion_matrix"]
    )
    metrics = dict(outcome.metrics)
    headline = {k: v for k, v in outcome.headline.items() if k != "confusion_matrix"}
    evaluation = outcome.evaluation
    if len(test_rows):
        test_outputs = predict_rows(final, test_rows)
        test_metrics = score_rows(test_rows, test_outputs)
        metrics["test"] = {
            "participants": len(set(groups[test_rows])),
            "images": len(test_rows),
            **test_metrics,
        }
        _write_predictions(run, "test_", frame, manifest, test_rows, test_outputs, target)
        plots += save_classification_plots(
            run, "test_", y[test_rows], test_outputs, target.classes, test_metrics["confusion_matrix"]
        )
        write_held_out_manifest(run, manifest, test_rows)
        headline = {k: v for k, v in test_metrics.items() if k != "confusion_matrix"}
        evaluation = f"held-out test participants ({len(set(groups[test_rows]))}, never trained or selected on); {evaluation}"

    from neurodl.report import plots as figures

    run.write_json(
        "preprocessing.json",
        {
            "images": preprocessing.to_dict(),
            "image_columns": list(images.image),
            "participant_column": images.participant,
            "label": target.to_dict(),
            "model": spec,
        },
    )
    run.save_weights(final.module.model.state_dict())
    write_training_record(
        cache_budget=images.cache_budget,
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
        figures.learning_curves(outcome.history, title=f"{options.label}: {options.model}"),
    )
    return {
        "task": "classification",
        "target": options.label,
        "model": options.model,
        "images": len(manifest),
        "participants": len(set(groups.tolist())),
        "classes": target.classes,
        "preprocessing": preprocessing.to_dict(),
        "evaluation": evaluation,
        "metrics": headline,
        "metrics_std": outcome.headline_std if not len(test_rows) else {},
        "epochs": final.result.epochs_run,
        "run": str(run.path),
        "plots": ["learning_curves.png", *plots],
    }


def _prediction_frame(
    names: Sequence[str], participants: Sequence[str | None], proba: np.ndarray, target: TargetEncoder
) -> pd.DataFrame:
    frame = pd.DataFrame({"participant_id": list(participants), "image": list(names)})
    frame[f"predicted_{target.column}"] = [target.classes[i] for i in proba.argmax(axis=1)]
    for k, name in enumerate(target.classes):
        frame[f"probability_{name}"] = proba[:, k]
    return frame


def _write_predictions(
    run: RunDirectory,
    prefix: str,
    frame: pd.DataFrame,
    manifest: Any,
    rows: np.ndarray,
    outputs: np.ndarray,
    target: TargetEncoder,
) -> None:
    names = [str(manifest.image_files[int(r)][0]) for r in rows]
    predictions = _prediction_frame(names, [manifest.participant_ids[int(r)] for r in rows], outputs, target)
    predictions.insert(2, target.column, frame[target.column].iloc[rows].map(label_text).to_numpy())
    run.write_csv(f"{prefix}predictions.csv", predictions)


@dataclass
class LoadedClassifier:
    """A trained classifier, ready for new images."""

    run: RunDirectory
    module: ClassifyModule
    preprocessing: ImagePreprocessing
    image_columns: list[str]
    participant_column: str
    target: TargetEncoder
    device: torch.device


def load(run_dir: Path, *, device: str = "auto") -> LoadedClassifier:
    """Open a classify run directory; tampered or foreign runs give a clear error."""
    from neurodl.engine import resolve_device

    run = RunDirectory.open(run_dir, task=TASK)
    prep = run.read_json("preprocessing.json")
    try:
        preprocessing = ImagePreprocessing.from_dict(prep["images"])
        target = TargetEncoder.from_dict(prep["label"])
        spec = dict(prep["model"])
        if (
            not 0 < int(spec["in_channels"]) <= 64
            or not 0 < int(spec["out_features"]) <= 1000
            or not 0 < int(spec.get("width", 16)) <= 1024
        ):
            raise ValueError("model sizes out of range")
        image_columns, participant_column = recorded_columns(prep, int(spec["in_channels"]))
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged or names an unknown model ({exc}).",
            "Train the model again.",
        ) from exc
    model = run.load_model(lambda: build_model(spec))
    target_device = resolve_device(device)
    model.to(target_device).eval()
    return LoadedClassifier(
        run,
        ClassifyModule(model),
        preprocessing,
        image_columns,
        participant_column,
        target,
        target_device,
    )


@dataclass
class Failure:
    """An input that could not be processed, and why."""

    name: str
    message: str


def _probabilities(loaded: LoadedClassifier, image: InputImage) -> tuple[np.ndarray, Any]:
    x = preprocess(loaded.preprocessing, image.paths, where=image.where)
    with torch.no_grad():
        output = loaded.module.model(x.as_tensor()[None].to(loaded.device)).float().cpu()
    return class_probabilities(output)[0], x


def predict(
    loaded: LoadedClassifier,
    inputs: Sequence[Path],
    *,
    label_column: str | None = None,
    shard: str | None = None,
    on_image: Any = None,
) -> tuple[pd.DataFrame, list[Failure], list[InputImage]]:
    """Probabilities for every input image; images that fail are reported, not fatal."""
    images, _ = resolve_inputs(
        inputs,
        image_columns=loaded.image_columns,
        participant_column=loaded.participant_column,
        label_column=label_column,
        shard=shard,
    )
    rows, kept, failures = [], [], []
    for image in images:
        try:
            proba, _ = _probabilities(loaded, image)
            rows.append(proba)
            kept.append(image)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        if on_image is not None:
            on_image(image)
    proba = np.asarray(rows).reshape(len(rows), len(loaded.target.classes))
    frame = _prediction_frame(
        [str(i.paths[0]) for i in kept], [i.participant for i in kept], proba, loaded.target
    )
    return frame, failures, kept


def evaluate(
    loaded: LoadedClassifier,
    manifest_path: Path,
    *,
    label_column: str | None = None,
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
    on_image: Any = None,
) -> tuple[dict[str, Any], list[Failure], list[str]]:
    """Predict a manifest and score it against its label column (default: the trained label).

    Participants the model was trained or selected on are refused unless
    ``allow_overlap``. With ``report_dir``, predictions, metrics and plots are written there
    once every image was processed.
    Returns metrics, failed images and warnings.
    """
    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    label = label_column or loaded.target.column
    manifest = load_manifest(
        manifest_path, loaded.image_columns, label, loaded.participant_column, require_files=False
    )
    require_columns(manifest.frame, [label], manifest_path)
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    frame, failures, kept = predict(loaded, [manifest_path], label_column=label, on_image=on_image)
    if not len(frame):
        reasons = "; ".join(f"{f.name}: {f.message}" for f in failures[:3])
        raise DataError(
            f"{manifest_path}: no image could be processed ({reasons}).", "Fix the inputs named above."
        )
    truth = pd.Series([image.label for image in kept])
    y = loaded.target.encode(truth, path=manifest_path)
    proba = frame[[f"probability_{c}" for c in loaded.target.classes]].to_numpy()
    metrics = classification_metrics(y, proba, loaded.target.classes)
    metrics["images"] = len(frame)
    if report_dir is not None and not failures:  # a report that leaves inputs out would mislead
        frame.insert(2, label, truth.map(label_text).to_numpy())
        writer = RunDirectory(report_dir, TASK)  # an atomic writer for the report files
        writer.write_csv("predictions.csv", frame)
        writer.write_json(
            "metrics.json", {"manifest": str(manifest_path), "model": str(loaded.run.path), **metrics}
        )
        save_classification_plots(writer, "", y, proba, loaded.target.classes, metrics["confusion_matrix"])
    return metrics, failures, warnings


def _explain(loaded: LoadedClassifier, x: torch.Tensor, method: str, class_index: int) -> torch.Tensor:
    """A (1, X, Y, Z) map of how much each voxel drives the chosen output, in the preprocessed space."""
    model = loaded.module.model
    batch = x.as_tensor()[None].to(loaded.device) if hasattr(x, "as_tensor") else x[None].to(loaded.device)
    if method == "gradcam":
        from monai.visualize import GradCAM

        cam = GradCAM(nn_module=model, target_layers=model.gradcam_layer)
        return cam(x=batch, class_idx=class_index).detach()[0]
    if method == "saliency":
        batch = batch.clone().requires_grad_(True)
        model.zero_grad()
        model(batch)[0, class_index].backward()
        return batch.grad.detach().abs().amax(dim=1)  # type: ignore[union-attr]
    from monai.visualize import OcclusionSensitivity

    size = max(2, min(batch.shape[2:]) // 6)
    occlusion = OcclusionSensitivity(
        nn_module=model, mask_size=size, n_batch=8, verbose=False, activate=False
    )
    with torch.no_grad():
        reference = model(batch)[0, class_index]
        occluded, _ = occlusion(batch)
    # Importance = how much the output drops when a region is hidden.
    return (reference - occluded[0, class_index])[None].detach()


def interpret(
    loaded: LoadedClassifier,
    inputs: Sequence[Path],
    *,
    method: str,
    out_dir: Path,
    overwrite: bool = False,
    shard: str | None = None,
    on_image: Any = None,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Write one NIfTI map per input (in the input's grid and affine) and a PNG of three slices."""
    if method not in METHODS:
        raise UsageError(f"--method '{method}' is not one of: {', '.join(METHODS)}.")
    images, _ = resolve_inputs(
        inputs, image_columns=loaded.image_columns, participant_column=loaded.participant_column, shard=shard
    )
    input_files = {p.resolve() for image in images for p in image.paths}
    written, failures = [], []
    from neurodl.report.slices import orthogonal_slices

    figures = RunDirectory(out_dir, TASK)  # used as an atomic writer for the PNGs
    binary = len(loaded.target.classes) == 2

    for image in images:
        target_path = out_dir / f"{image.name}_{method}.nii.gz"
        try:
            if target_path.resolve() in input_files:
                raise OutputError(
                    f"{target_path}: is also an input; neurodl never overwrites its inputs.",
                    "Choose another -o folder.",
                )
            if target_path.exists() and not overwrite:
                written.append({"image": str(image.paths[0]), "map": str(target_path), "skipped": True})
                continue
            proba, x = _probabilities(loaded, image)
            predicted = int(proba.argmax())
            # One logit for two classes: its map is the evidence for the positive class.
            class_index = 0 if binary else predicted
            explained = _explain(loaded, x, method, class_index)
            mapped = invert_to_input(explained, x, loaded.preprocessing)[0]
            original = load_volume(image.paths[0])
            save_volume(mapped.astype(np.float32), target_path, like=original)
            png = out_dir / f"{image.name}_{method}.png"
            figures.save_figure(
                png.name,
                orthogonal_slices(
                    original,
                    mapped,
                    title=f"{image.name}: {method} ({loaded.target.classes[predicted]}, p={proba[predicted]:.2f})",
                ),
            )
            written.append(
                {
                    "image": str(image.paths[0]),
                    "map": str(target_path),
                    "png": str(png),
                    "predicted": loaded.target.classes[predicted],
                }
            )
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    return written, failures
