"""``neurodl classify``: 3D CNN classification of NIfTI volumes, with interpretation maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import (
    at_work,
    check_output_file,
    evaluate_images,
    report_failures,
    report_written,
    write_table,
)
from neurodl.cli._console import err_console
from neurodl.cli._launch import train_and_report, trained_on_images
from neurodl.cli._model_command import BATCH, TABLE, Evaluation, ModelRun, evaluate_command, model_command
from neurodl.cli._options import ImageInputs, output_folder, output_table
from neurodl.cli._render import counted
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import ClassifyOptions

app = typer.Typer(
    help="Classify NIfTI volumes (e.g. dementia vs healthy), or regress a number from them (brain age), with 3D CNNs; interpretation maps.",
    no_args_is_help=True,
)


@train_command(
    app,
    ClassifyOptions,
    source_help="Manifest (CSV/TSV): one row per image, image path and label columns. Or a BIDS dataset root (--image names a suffix, e.g. T1w). Not needed with --resume.",
)
def train(manifest: Path | None, options: ClassifyOptions, run: TrainRun) -> None:
    """Train a 3D CNN on the images of a manifest; write a run directory.

    A numeric label with more than 5 levels (age, a severity score) trains a regressor (--task).

    Example: neurodl classify train sample_data/participants.tsv --image t1 --label diagnosis --test-fraction 0.2 --out runs/cnn

    Example: neurodl classify train sample_data/participants.tsv --image t1 --label age --color-by diagnosis --out runs/brain-age
    """
    from neurodl.tasks import classify  # heavy (torch, monai): only when the command runs

    train_and_report(
        classify.train,
        manifest,
        options,
        run,
        describe=trained_on_images("size {size}, {normalize} intensities"),
    )


@model_command(app, "predict", TABLE)
def predict(run: ModelRun, inputs: ImageInputs, output: Path | None = output_table()) -> None:
    """Predict the class of each image (predicted class, one probability per class) or its value.

    A regression model given a manifest with its target column also writes the true value and the
    gap predicted - true (for brain age, the brain-age gap).

    Example: neurodl classify predict --model runs/cnn scans/ -o predictions.csv
    """
    from neurodl.tasks import classify  # heavy: only when the command runs

    check_output_file(output, inputs, run.overwrite)
    with at_work(classify, run, "predicting") as (loaded, advance):
        predictions, failures, _ = classify.predict(loaded, inputs, **run.batch(advance))
    if output is None or len(
        predictions
    ):  # no empty table when every input failed: a retry would find it in the way
        write_table(predictions, output, counted(len(predictions), "prediction"))
    report_failures(err_console(), failures, len(predictions) + len(failures))


@evaluate_command(
    app,
    "Manifest with the model's image columns and the label column, or a BIDS dataset root.",
    after="label",
    out="Folder for predictions.csv, metrics.json, ROC and confusion-matrix (or predicted-vs-true) PNGs.",
)
def evaluate(
    run: Evaluation,
    label: Annotated[
        str | None,
        typer.Option("--label", "-l", help="Label column (default: the one the model was trained on)."),
    ] = None,
    color_by: Annotated[
        str,
        typer.Option(
            "--color-by", help="Regression: colour the plots by this column and plot residuals per group."
        ),
    ] = "",
) -> None:
    """Score a trained classifier (or regressor) on a labelled manifest of held-out participants.

    Example: neurodl classify evaluate --model runs/cnn runs/cnn/test_manifest.tsv --out runs/cnn/test
    """
    from neurodl.tasks import classify  # heavy: only when the command runs

    evaluate_images(
        classify,
        run,
        lambda loaded: loaded.target.column,
        saved="Predictions, metrics and plots",
        label_column=label,
        color_by=color_by,
    )


@model_command(app, "interpret", BATCH)
def interpret(
    run: ModelRun,
    inputs: ImageInputs,
    method: Annotated[
        str, typer.Option("--method", help="gradcam, saliency (input gradients) or occlusion.")
    ] = "gradcam",
    out: Path = output_folder(
        Path("interpretation"), "Folder for <image>_<method>.nii.gz maps and PNG previews."
    ),
) -> None:
    """Explain predictions: one map per image, in the image's own grid and affine, plus a PNG of three slices.

    Binary models explain the positive class; multiclass models the predicted class.

    Example: neurodl classify interpret --model runs/cnn sample_data/sub-002/anat/sub-002_T1w.nii.gz --method gradcam -o maps/
    """
    from neurodl.tasks import classify  # heavy: only when the command runs

    with at_work(classify, run, f"{method} maps") as (loaded, advance):
        written, failures = classify.interpret(loaded, inputs, out, method=method, **run.batch(advance))
    skipped = sum(1 for w in written if w.get("skipped"))
    report_written(run, written, failures, kept=skipped, noun="map", out=out)
