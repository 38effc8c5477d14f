"""``neurodl classify``: 3D CNN classification of NIfTI volumes, with interpretation maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import check_output_file, file_progress, report_failures
from neurodl.cli._console import err_console, print_json
from neurodl.cli._launch import train_and_report
from neurodl.cli._options import (
    BidsFilter,
    DeviceOption,
    ImageInputs,
    JsonFlag,
    ModelDirOption,
    OverwriteFlag,
    QuietFlag,
    ShardOption,
)
from neurodl.cli._render import counted, metrics_table
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
        describe=lambda s: (
            f"{s['images']} images, {s['participants']} participants; resampled to {s['preprocessing']['spacing']} mm, size {s['preprocessing']['size']}, {s['preprocessing']['normalize']} intensities"
        ),
    )


@app.command("predict")
def predict(
    model: ModelDirOption,
    inputs: ImageInputs,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV to write (default: stdout).", dir_okay=False)
    ] = None,
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
) -> None:
    """Predict the class of each image (predicted class, one probability per class) or its value.

    A regression model given a manifest with its target column also writes the true value and the
    gap predicted - true (for brain age, the brain-age gap).

    Example: neurodl classify predict --model runs/cnn scans/ -o predictions.csv
    """
    import sys

    from neurodl.io.atomic import atomic_output
    from neurodl.tasks import classify  # heavy: only when the command runs

    check_output_file(output, inputs, overwrite)
    console = err_console()
    loaded = classify.load(model, device=device)
    with file_progress(console, "predicting", quiet=quiet) as advance:
        predictions, failures, _ = classify.predict(loaded, inputs, shard=shard, on_image=advance)
    if output is None:
        predictions.to_csv(sys.stdout, index=False)
    elif len(predictions):  # no empty table when every input failed: a retry would find it in the way
        with atomic_output(output) as tmp:
            predictions.to_csv(tmp, index=False, sep="\t" if output.suffix.lower() == ".tsv" else ",")
        console.print(f"{counted(len(predictions), 'prediction')} written to {output}")
    report_failures(console, failures, len(predictions) + len(failures))


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest with the model's image columns and the label column, or a BIDS dataset root."
        ),
    ],
    label: Annotated[
        str | None,
        typer.Option("--label", "-l", help="Label column (default: the one the model was trained on)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for predictions.csv, metrics.json, ROC and confusion-matrix (or predicted-vs-true) PNGs.",
            file_okay=False,
        ),
    ] = None,
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Score participants the model was trained on (optimistic)."),
    ] = False,
    bids_filter: BidsFilter = None,
    color_by: Annotated[
        str,
        typer.Option(
            "--color-by", help="Regression: colour the plots by this column and plot residuals per group."
        ),
    ] = "",
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Score a trained classifier (or regressor) on a labelled manifest of held-out participants.

    Example: neurodl classify evaluate --model runs/cnn runs/cnn/test_manifest.tsv --out runs/cnn/test
    """
    from neurodl.tasks import classify  # heavy: only when the command runs

    console = err_console()
    loaded = classify.load(model, device=device)
    with file_progress(console, "evaluating", quiet=quiet) as advance:
        metrics, failures, warnings = classify.evaluate(
            loaded,
            manifest,
            label_column=label,
            allow_overlap=allow_overlap,
            bids_filter=bids_filter or (),
            report_dir=out,
            overwrite=overwrite,
            color_by=color_by,
            on_image=advance,
        )
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if json_output:
        print_json(metrics)
    if not quiet:
        console.print(
            metrics_table(f"{loaded.target.column} on {manifest.name} ({metrics['images']} images)", metrics)
        )
        if out is not None and not failures:
            console.print(f"Predictions, metrics and plots written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures), report=out is not None)


@app.command("interpret")
def interpret(
    model: ModelDirOption,
    inputs: ImageInputs,
    method: Annotated[
        str, typer.Option("--method", help="gradcam, saliency (input gradients) or occlusion.")
    ] = "gradcam",
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for <image>_<method>.nii.gz maps and PNG previews.", file_okay=False
        ),
    ] = Path("interpretation"),
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Explain predictions: one map per image, in the image's own grid and affine, plus a PNG of three slices.

    Binary models explain the positive class; multiclass models the predicted class.

    Example: neurodl classify interpret --model runs/cnn sample_data/sub-002/anat/sub-002_T1w.nii.gz --method gradcam -o maps/
    """
    from neurodl.tasks import classify  # heavy: only when the command runs

    console = err_console()
    loaded = classify.load(model, device=device)
    with file_progress(console, f"{method} maps", quiet=quiet) as advance:
        written, failures = classify.interpret(
            loaded, inputs, method=method, out_dir=out, overwrite=overwrite, shard=shard, on_image=advance
        )
    if json_output:
        print_json(written)
    skipped = sum(1 for w in written if w.get("skipped"))
    console.print(
        f"{counted(len(written) - skipped, 'map')} written to {out}"
        + (f"; {skipped} existing kept (--overwrite to redo)" if skipped else "")
    )
    report_failures(console, failures, len(written) + len(failures))
