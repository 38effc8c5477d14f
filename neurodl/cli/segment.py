"""``neurodl segment``: 3D segmentation, masks written in each input's own space."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import at_work, check_output_file, evaluate_images, kept, report_written, write_table
from neurodl.cli._launch import train_and_report, trained_on_images
from neurodl.cli._model_command import BATCH, Evaluation, ModelRun, evaluate_command, model_command
from neurodl.cli._options import ImageInputs, output_folder, preview_flag
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import SegmentOptions

app = typer.Typer(
    help="Segment NIfTI volumes (e.g. CSF, grey and white matter) with 3D U-Nets; label volumes in mL.",
    no_args_is_help=True,
)

Overlap = Annotated[
    float | None,
    typer.Option("--overlap", help="Sliding-window overlap between patches, 0-0.9 (default: the run's)."),
]


@train_command(
    app,
    SegmentOptions,
    source_help="Manifest (CSV/TSV): one row per image, image and mask columns. Or a BIDS dataset root (--image/--mask name suffixes, e.g. T1w, dseg). Not needed with --resume.",
)
def train(manifest: Path | None, options: SegmentOptions, run: TrainRun) -> None:
    """Train a segmenter on images and label maps; write a run directory (monitored on validation Dice).

    Example: neurodl segment train sample_data/participants.tsv --image t1 --mask dseg --test-fraction 0.2 --out runs/seg
    """
    from neurodl.tasks import segment  # heavy (torch, monai): only when the command runs

    train_and_report(segment.train, manifest, options, run, describe=trained_on_images())


@model_command(app, "predict", (*BATCH, "workers"))
def predict(
    run: ModelRun,
    inputs: ImageInputs,
    out: Path = output_folder(
        Path("segmentations"), "Folder for <image>_dseg.nii.gz masks (in each input's grid and affine)."
    ),
    volumes: Annotated[
        Path | None,
        typer.Option(
            "--volumes",
            help="CSV with one row per input and the volume in mL of each label (a biomarker table); "
            "an existing table is updated, so a resumed batch or the shards of one complete it.",
            dir_okay=False,
        ),
    ] = None,
    overlap: Overlap = None,
    tta: Annotated[
        bool,
        typer.Option("--tta", help="Test-time augmentation: average over flips along each axis (4x slower)."),
    ] = False,
    probabilities: Annotated[
        bool,
        typer.Option(
            "--probabilities", help="Also write <image>_probseg.nii.gz (4D, one probability per label)."
        ),
    ] = False,
    preview: bool = preview_flag("Also write a PNG of three slices with the mask over the image."),
) -> None:
    """Segment images: one integer mask per input, in the input's own grid, orientation and affine.

    Masks that already exist are kept (use --overwrite to redo), so an interrupted batch resumes;
    a bad input is reported and the others are still processed.

    Example: neurodl segment predict --model runs/seg sample_data/participants.tsv -o masks/ --volumes volumes.csv
    """
    from neurodl.tasks import segment  # heavy: only when the command runs

    # An existing volumes table is extended (a resumed batch), never refused.
    check_output_file(volumes, inputs, overwrite=True)
    with at_work(segment, run, "segmenting", overlap=overlap) as (loaded, advance):
        table, failures = segment.predict(
            loaded,
            inputs,
            out,
            tta=tta,
            probabilities=probabilities,
            workers=run.workers,
            **run.batch(advance, preview=preview),
        )
    if volumes is not None and len(table):
        written_table = table.drop(columns=["status"])
        if volumes.exists() and not run.overwrite:
            from neurodl.io.tables import read_table

            existing = read_table(volumes, text_columns=["participant_id"])
            written_table = segment.merge_volume_tables(existing, written_table, volumes)
        write_table(written_table, volumes, "")
    also = f"; volumes in {volumes}" if volumes is not None else ""
    report_written(
        run, table.to_dict(orient="records"), failures, kept=kept(table), noun="mask", out=out, also=also
    )


@evaluate_command(
    app,
    "Manifest with the model's image columns and a mask column, or a BIDS dataset root.",
    after="mask",
)
def evaluate(
    run: Evaluation,
    mask: Annotated[
        str | None, typer.Option("--mask", help="Mask column (default: the one the model was trained on).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
) -> None:
    """Dice and 95th-percentile Hausdorff distance (mm) per label and per image, against true masks.

    Example: neurodl segment evaluate --model runs/seg runs/seg/test_manifest.tsv --out runs/seg/test
    """
    from neurodl.tasks import segment  # heavy: only when the command runs

    evaluate_images(
        segment,
        run,
        lambda loaded: loaded.mask_column,
        saved="Per-image scores and metrics",
        mask_column=mask,
        tta=tta,
    )
