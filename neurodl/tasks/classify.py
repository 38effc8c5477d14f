"""Classify: "is this subject healthy?" from the image itself, with a 3D CNN.

Preprocessing (RAS, spacing, size, normalisation) is planned on the training
images, recorded in the run and re-applied by ``predict``; interpretation
maps are computed in that space and brought back to each input's own grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import ClassifyOptions
from neurodl.data.batches import ImageBatches
from neurodl.data.images import (
    ImagePreprocessing,
    augmentation,
    invert_to_input,
    preprocess,
)
from neurodl.data.inputs import InputImage
from neurodl.data.splits import regression_strata
from neurodl.data.tabular import TargetEncoder, label_text
from neurodl.data.volumes import VolumeDataset
from neurodl.engine.memory import require_step_fits
from neurodl.errors import NeurodlError, UsageError
from neurodl.io.nifti import load_volume, save_volume
from neurodl.io.rundir import RunDirectory
from neurodl.io.tables import require_columns
from neurodl.models import create_model
from neurodl.tasks import _trained as trained
from neurodl.tasks._classification import balanced_class_weights, save_classification_plots
from neurodl.tasks._driver import Fitted, Recipe, Training, require_known_model, trains
from neurodl.tasks._regression import save_regression_plots
from neurodl.tasks._supervised import ClassifyModule, RegressModule, SupervisedModule
from neurodl.tasks._trained import Failure
from neurodl.tasks.metrics import classification_metrics, regression_metrics

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

TASK = "classify"
METHODS = ("gradcam", "saliency", "occlusion")


def model_spec(options: ClassifyOptions, channels: int, outputs: int) -> dict[str, Any]:
    return {
        "name": options.model,
        "in_channels": channels,
        "out_features": outputs,
        "depth": options.depth,
        "width": options.width,
        "dropout": options.dropout,
    }


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(TASK, spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def label_target(column: pd.Series, options: ClassifyOptions, path: Path) -> TargetEncoder:
    """Classes or a continuous target, by the biomarkers' rule unless ``--task`` says which.

    Strings, and integers with at most 5 levels, are classes; other numbers are a value
    to regress (a label such as age is never split into dozens of classes).
    """
    target = TargetEncoder.fit(
        column, name=options.label, kind=options.task, positive=options.positive, path=path
    )
    if target.kind == "regression" and (options.positive or options.class_weight != "none"):
        raise UsageError(
            f"{path}: '{options.label}' is a continuous target (image regression); --positive and --class-weight apply to classes.",
            "Drop them, or add --task classification to treat its values as classes.",
        )
    if target.kind == "classification" and options.loss != "mse":
        raise UsageError(
            f"{path}: '{options.label}' holds classes ({', '.join(target.classes)}); --loss {options.loss} is a regression loss.",
            "Drop --loss (classes use cross-entropy), or add --task regression for a numeric label.",
        )
    return target


def _truth(target: TargetEncoder, column: pd.Series, path: Path) -> np.ndarray:
    """Class indices, or values in the target's own units, of a label column (bad cells raise)."""
    encoded = target.encode(column, path=path)
    return encoded if target.kind == "classification" else pd.to_numeric(column).to_numpy(dtype=float)


def _color_groups(frame: pd.DataFrame, column: str, rows: Any) -> list[str] | None:
    """The ``--color-by`` group of each row (empty cells are 'n/a')."""
    if not column:
        return None
    return [label_text(v) if pd.notna(v) else "n/a" for v in frame[column].iloc[list(rows)]]


def save_plots(
    writer: RunDirectory,
    prefix: str,
    target: TargetEncoder,
    truth: np.ndarray,
    outputs: np.ndarray,
    metrics: dict[str, Any],
    groups: list[str] | None = None,
    group_name: str = "",
) -> list[str]:
    """ROC and confusion matrix (classes), or predicted-vs-true and residuals by group (values)."""
    if target.kind == "regression":
        return save_regression_plots(writer, prefix, truth, outputs, target.column, groups, group_name)
    return save_classification_plots(
        writer, prefix, truth, outputs, target.classes, metrics["confusion_matrix"]
    )


def score(
    target: TargetEncoder, truth: np.ndarray, outputs: np.ndarray, training_mean: float | None = None
) -> dict[str, Any]:
    """Classification metrics, or regression metrics in the target's units."""
    if target.kind == "regression":
        return regression_metrics(truth, outputs, training_mean=training_mean)
    return classification_metrics(truth, outputs, target.classes)


@trains(
    TASK,
    ClassifyOptions,
    before=lambda options: require_known_model(TASK, options.model),
    label=lambda options: options.label,
)
def train(training: Training) -> dict[str, Any]:
    """Train a classifier (or, for a continuous label, a regressor) on the images of a manifest.

    Writes the run directory ``out``. ``test_fraction`` holds out participants that
    are never trained or selected on; they are scored at the end and written to
    ``test_manifest.tsv`` for ``evaluate``. The rest is split (or cross-validated)
    by :func:`neurodl.tasks._protocol.run_protocol`.
    """
    options, manifest, source = training.options, training.manifest, training.manifest_path
    images = options.images
    if manifest.label_is_image:
        raise UsageError(
            f"{source}: column '{options.label}' holds images; classify needs a class label or a number.",
            "Use `neurodl segment` for masks, or name the label column with --label.",
        )
    if options.color_by:
        require_columns(manifest.frame, [options.color_by], source)
    frame = manifest.frame
    target = label_target(frame[options.label], options, source)
    regression = target.kind == "regression"
    y = _truth(target, frame[options.label], source)
    training.hold_out_test(regression_strata(y, bins=5) if regression else y)
    rows = training.rows
    channels = len(images.image)
    preprocessing = training.plan()
    spec = model_spec(options, channels, target.outputs)
    require_step_fits(  # before any image is decoded or any weight allocated
        lambda: build_model(spec),
        (channels, *preprocessing.size),
        options.train,
        batch_size=options.train.batch_size or len(rows),
        model_name=options.model,
    )
    base = training.cached(VolumeDataset(training.items, y, preprocessing, **training.cache_options()))
    augment = augmentation(images.augment)
    seed = training.seed

    def module_for(train_rows: np.ndarray) -> SupervisedModule:
        if regression:
            # Mean and SD of the training rows only: validation and test values stay unseen.
            scaled = TargetEncoder.fit(
                frame[options.label].iloc[train_rows],
                name=options.label,
                kind="regression",
                positive="",
                path=source,
            )
            return RegressModule(build_model(spec), scaled, options.loss)
        weights = (
            balanced_class_weights(y[train_rows], len(target.classes))
            if options.class_weight == "balanced"
            else None
        )
        return ClassifyModule(build_model(spec), weights)

    def batches(module: SupervisedModule, subset_rows: np.ndarray, training_set: bool) -> ImageBatches:
        return ImageBatches(
            base.subset(subset_rows, augment=augment if training_set else None, seed=seed),
            batch_size=options.train.batch_size,
            shuffle=training_set,
            seed=seed,
            workers=images.workers,
        )

    # The baseline a regression must beat: everyone predicted the mean of the rows the model learnt
    # from. Each prediction of the protocol is scored right after it is made.
    learnt: list[TargetEncoder] = []

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        if isinstance(fitted.module, RegressModule):
            learnt[:] = [fitted.module.target]
        return fitted.module.predict(
            ImageBatches(base.subset(subset_rows), batch_size=8, shuffle=False, workers=images.workers)
        )

    def score_rows(subset_rows: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        pooled = subset_rows is rows  # out-of-fold predictions of several models: no single mean
        mean = learnt[0].center if learnt and not pooled else None
        return score(target, y[subset_rows], outputs, mean)

    def outputs_of(prefix: str, subset_rows: np.ndarray, outputs: np.ndarray) -> list[str]:
        _write_predictions(training.run, prefix, manifest, subset_rows, outputs, target)
        metrics = {} if regression else score_rows(subset_rows, outputs)
        coloured = _color_groups(frame, options.color_by, subset_rows)
        return save_plots(
            training.run, prefix, target, y[subset_rows], outputs, metrics, coloured, options.color_by
        )

    def record(final: Fitted) -> dict[str, Any]:
        return {
            "label": (final.module.target if regression else target).to_dict(),
            "model": spec,
        }

    return training.train(
        Recipe(
            module=module_for,
            batches=batches,
            predict=predict_rows,
            score=score_rows,
            record=record,
            title=f"{options.label}: {options.model}",
            summary={
                "task": target.kind,
                "target": options.label,
                "model": options.model,
                "classes": target.classes,
            },
            headline=lambda name: name != "confusion_matrix",
            outputs=outputs_of,
        )
    )


def _prediction_frame(
    names: Sequence[str],
    participants: Sequence[str | None],
    outputs: np.ndarray,
    target: TargetEncoder,
    truth: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """One row per image: ids, the true label when known, and the prediction.

    Classes: the predicted class and one probability per class. Values: the prediction
    in the target's units and, with the truth, the gap ``predicted - true`` (for brain
    age, the brain-age gap).
    """
    frame = pd.DataFrame({"participant_id": list(participants), "image": list(names)})
    column = target.column
    if target.kind == "regression":
        predicted = np.asarray(outputs, dtype=float)
        if truth is not None:
            frame[column] = np.asarray(truth, dtype=float)
        frame[f"predicted_{column}"] = predicted
        if truth is not None:
            frame[f"{column}_gap"] = predicted - np.asarray(truth, dtype=float)
        return frame
    if truth is not None:
        frame[column] = [label_text(v) if pd.notna(v) else "" for v in truth]
    frame[f"predicted_{column}"] = [target.classes[i] for i in outputs.argmax(axis=1)]
    for k, name in enumerate(target.classes):
        frame[f"probability_{name}"] = outputs[:, k]
    return frame


def _write_predictions(
    run: RunDirectory,
    prefix: str,
    manifest: Any,
    rows: np.ndarray,
    outputs: np.ndarray,
    target: TargetEncoder,
) -> None:
    column = manifest.frame[target.column].iloc[rows]
    truth = pd.to_numeric(column) if target.kind == "regression" else column
    predictions = _prediction_frame(
        [str(manifest.image_files[int(r)][0]) for r in rows],
        [manifest.participant_ids[int(r)] for r in rows],
        outputs,
        target,
        truth.tolist(),
    )
    run.write_csv(f"{prefix}predictions.csv", predictions)


@dataclass
class LoadedClassifier(trained.Trained):
    """A trained classifier (or image regressor), ready for new images."""

    module: SupervisedModule
    target: TargetEncoder


def load(run_dir: Path, *, device: str = "auto") -> LoadedClassifier:
    """Open a classify run directory; tampered or foreign runs give a clear error."""

    def read(prep: dict[str, Any], preprocessing: ImagePreprocessing, spec: dict[str, Any]) -> dict[str, Any]:
        target = TargetEncoder.from_dict(prep["label"])
        if (
            not 0 < int(spec["in_channels"]) <= 64
            or int(spec["out_features"]) != target.outputs
            or not 0 < int(spec.get("width", 16)) <= 1024
            or not (target.kind == "classification" or np.isfinite([target.center, target.scale]).all())
        ):
            raise ValueError("model sizes out of range")
        return {"target": target}

    def wrap(model: torch.nn.Module, fields: dict[str, Any]) -> SupervisedModule:
        target = fields["target"]
        return RegressModule(model, target) if target.kind == "regression" else ClassifyModule(model)

    return trained.load_trained(run_dir, TASK, LoadedClassifier, read, build_model, device, wrap)


def _outputs(loaded: LoadedClassifier, image: InputImage) -> tuple[np.ndarray, Any]:
    """Class probabilities (K,) or the value (1,) of one image, and its preprocessed tensor."""
    x = preprocess(loaded.preprocessing, image.paths, where=image.where)
    with torch.no_grad():
        output = loaded.module.model(x.as_tensor()[None].to(loaded.device)).float().cpu()
    return np.atleast_1d(loaded.module.outputs(output)[0]), x


def _true_value_column(loaded: LoadedClassifier, inputs: Sequence[Path]) -> str | None:
    """A regression model's target column when the only input is a table that has it (for the gap)."""
    from neurodl.data.inputs import TABLE_SUFFIXES
    from neurodl.io.tables import read_table

    if (
        loaded.target.kind != "regression"
        or len(inputs) != 1
        or inputs[0].suffix.lower() not in TABLE_SUFFIXES
    ):
        return None
    try:
        columns = read_table(inputs[0]).columns
    except NeurodlError:
        return None  # resolve_inputs reports the unreadable table
    return loaded.target.column if loaded.target.column in columns else None


def predict(
    loaded: LoadedClassifier,
    inputs: Sequence[Path],
    *,
    label_column: str | None = None,
    bids_filter: Sequence[str] = (),
    **settings: Unpack[trained.BatchSettings],
) -> tuple[pd.DataFrame, list[Failure], list[InputImage]]:
    """Probabilities (or values) for every input image; images that fail are reported, not fatal.

    With ``label_column`` the true label is a column of the table. A regression model
    given a manifest with its target column adds it, and the gap ``predicted - true``.
    """
    label_column = label_column or _true_value_column(loaded, inputs)
    batch = trained.open_batch(loaded, inputs, label_column=label_column, bids_filter=bids_filter, **settings)
    done, failures = batch.each(lambda image: (image, _outputs(loaded, image)[0]))
    kept = [image for image, _ in done]
    rows = [output for _, output in done]
    target = loaded.target
    regression = target.kind == "regression"
    outputs = np.asarray(rows, dtype=float).reshape(len(rows), 1 if regression else len(target.classes))
    truth = None
    if label_column is not None:
        column = pd.Series([image.label for image in kept], dtype=object)
        # An empty or unreadable true value leaves that row's gap empty; evaluate is the strict one.
        truth = pd.to_numeric(column, errors="coerce").tolist() if regression else column.tolist()
    frame = _prediction_frame(
        [str(i.paths[0]) for i in kept],
        [i.participant for i in kept],
        outputs[:, 0] if regression else outputs,
        target,
        truth,
    )
    return frame, failures, kept


def evaluate(
    loaded: LoadedClassifier,
    manifest_path: Path,
    *,
    label_column: str | None = None,
    color_by: str = "",
    on_image: Any = None,
    **settings: Unpack[trained.EvaluationSettings],
) -> tuple[dict[str, Any], list[Failure], list[str]]:
    """Predict a manifest and score it against its label column (default: the trained label).

    Participants the model was trained or selected on are refused unless
    ``allow_overlap``. With ``report_dir``, predictions, metrics and plots are written there
    once every image was processed (regression plots coloured by the ``color_by`` column).
    Returns metrics, failed images and warnings.
    """
    label = label_column or loaded.target.column
    evaluation = trained.open_evaluation(
        loaded,
        manifest_path,
        label=label,
        required=[label, *([color_by] if color_by else [])],
        resolve=False,  # predict reads the manifest's images
        **settings,
    )
    frame, failures, kept = predict(
        loaded,
        [manifest_path],
        label_column=label,
        on_image=on_image,
        bids_filter=settings.get("bids_filter", ()),
    )
    trained.require_some(kept, failures, manifest_path, "processed")
    target = loaded.target
    y = _truth(target, pd.Series([image.label for image in kept], dtype=object), manifest_path)
    if target.kind == "regression":
        outputs = frame[f"predicted_{target.column}"].to_numpy(dtype=float)
    else:
        outputs = frame[[f"probability_{c}" for c in target.classes]].to_numpy()
    metrics = score(target, y, outputs, target.center if target.kind == "regression" else None)
    metrics["images"] = len(frame)
    writer = evaluation.report({"predictions.csv": frame}, metrics, failures)
    if writer is not None:
        coloured = _color_groups(evaluation.manifest.frame, color_by, [int(image.row or 0) for image in kept])
        save_plots(writer, "", target, y, outputs, metrics, coloured, color_by)
    return metrics, failures, evaluation.warnings


def occlusion_settings(shape: tuple[int, ...]) -> dict[str, Any]:
    """Occlusion's mask size, overlap and batch (``n_batch``) for an input of ``shape`` (voxels), as
    keywords of MONAI's ``OcclusionSensitivity``.

    A box of a quarter of each side, moved by half its size, hides every region in
    7 positions per axis whatever the input size: 343 forward passes (a sixth of the
    side with MONAI's 60 % overlap took 3,375 at 48^3, 57 s on a 2-core CPU).
    Occluded copies go through the network 16 at a time.
    """
    return {"mask_size": tuple(max(2, -(-side // 4)) for side in shape), "overlap": 0.5, "n_batch": 16}


def _explain(loaded: LoadedClassifier, x: torch.Tensor, method: str, class_index: int) -> torch.Tensor:
    """A (1, X, Y, Z) map of how much each voxel drives the chosen output, in the preprocessed space."""
    model = loaded.module.model
    batch = x.as_tensor()[None].to(loaded.device) if hasattr(x, "as_tensor") else x[None].to(loaded.device)
    if method == "gradcam":
        from monai.visualize import GradCAM

        cam = GradCAM(nn_module=model, target_layers=str(model.gradcam_layer))
        return cam(x=batch, class_idx=class_index).detach()[0]
    if method == "saliency":
        batch = batch.clone().requires_grad_(True)
        model.zero_grad()
        model(batch)[0, class_index].backward()
        return batch.grad.detach().abs().amax(dim=1)  # type: ignore[union-attr]
    from monai.visualize import OcclusionSensitivity

    occlusion = OcclusionSensitivity(
        model, verbose=False, activate=False, **occlusion_settings(tuple(batch.shape[2:]))
    )
    with torch.no_grad():
        reference = model(batch)[0, class_index]
        occluded, _ = occlusion(batch)
    # Importance = how much the output drops when a region is hidden.
    return (reference - occluded[0, class_index])[None].detach()


def interpret(
    loaded: LoadedClassifier,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    method: str,
    **settings: Unpack[trained.BatchSettings],
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Write one NIfTI map per input (in the input's grid and affine) and a PNG of three slices."""
    if method not in METHODS:
        raise UsageError(f"--method '{method}' is not one of: {', '.join(METHODS)}.")
    batch = trained.open_batch(loaded, inputs, out_dir, **settings)
    from neurodl.report.slices import orthogonal_slices

    binary = len(loaded.target.classes) == 2
    regression = loaded.target.kind == "regression"

    def explain(image: InputImage) -> dict[str, Any]:
        target_path = batch.output(f"{image.name}_{method}.nii.gz")
        if batch.keeps(target_path):
            return {"image": str(image.paths[0]), "map": str(target_path), "skipped": True}
        proba, x = _outputs(loaded, image)
        predicted = 0 if regression else int(proba.argmax())
        # One logit for two classes (or one value): its map is the evidence for the positive
        # class (for a higher value).
        class_index = 0 if binary or regression else predicted
        said = (
            f"predicted {loaded.target.column} {proba[0]:.4g}"
            if regression
            else f"{loaded.target.classes[predicted]}, p={proba[predicted]:.2f}"
        )
        explained = _explain(loaded, x, method, class_index)
        mapped = invert_to_input(explained, x, loaded.preprocessing)[0]
        original = load_volume(image.paths[0])
        save_volume(mapped.astype(np.float32), target_path, like=original)
        png = batch.output(f"{image.name}_{method}.png")
        batch.writer.save_figure(
            png.name, orthogonal_slices(original, mapped, title=f"{image.name}: {method} ({said})")
        )
        return {
            "image": str(image.paths[0]),
            "map": str(target_path),
            "png": str(png),
            "predicted": float(proba[0]) if regression else loaded.target.classes[predicted],
        }

    return batch.each(explain)
