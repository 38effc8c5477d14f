"""``neurodl segment``: 3D segmentation, masks written in each input's own space."""

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
    PredictWorkers,
    QuietFlag,
    ShardOption,
)
from neurodl.cli._render import counted, metrics_table
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

    def describe(summary: dict) -> str:
        names = ", ".join(f"{v}={n}" for v, n in summary["labels"].items() if int(v) != 0)
        return f"{summary['images']} images, {summary['participants']} participants; labels {names}; resampled to {summary['preprocessing']['spacing']} mm"

    train_and_report(segment.train, manifest, options, run, describe=describe)


@app.command("predict")
def predict(
    model: ModelDirOption,
    inputs: ImageInputs,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for <image>_dseg.nii.gz masks (in each input's grid and affine).",
            file_okay=False,
        ),
    ] = Path("segmentations"),
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
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write a PNG of three slices with the mask over the image.")
    ] = False,
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    workers: PredictWorkers = 2,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Segment images: one integer mask per input, in the input's own grid, orientation and affine.

    Masks that already exist are kept (use --overwrite to redo), so an interrupted batch resumes;
    a bad input is reported and the others are still processed.

    Example: neurodl segment predict --model runs/seg sample_data/participants.tsv -o masks/ --volumes volumes.csv
    """
    from neurodl.io.atomic import atomic_output
    from neurodl.tasks import segment  # heavy: only when the command runs

    # An existing volumes table is extended (a resumed batch), never refused.
    check_output_file(volumes, inputs, overwrite=True)
    console = err_console()
    loaded = segment.load(model, device=device, overlap=overlap)
    with file_progress(console, "segmenting", quiet=quiet) as advance:
        table, failures = segment.predict(
            loaded,
            inputs,
            out,
            tta=tta,
            probabilities=probabilities,
            preview=preview,
            overwrite=overwrite,
            shard=shard,
            workers=workers,
            on_image=advance,
        )
    if volumes is not None and len(table):
        sep = "\t" if volumes.suffix.lower() == ".tsv" else ","
        written_table = table.drop(columns=["status"])
        if volumes.exists() and not overwrite:
            from neurodl.io.manifest import read_table

            existing = read_table(volumes, text_columns=["participant_id"])
            written_table = segment.merge_volume_tables(existing, written_table, volumes)
        with atomic_output(volumes) as tmp:
            written_table.to_csv(tmp, index=False, sep=sep)
    if json_output:
        print_json(table.to_dict(orient="records"))
    written = int((table["status"] == "written").sum()) if len(table) else 0
    kept = len(table) - written
    console.print(
        f"{counted(written, 'mask')} written to {out}"
        + (f"; {kept} existing kept (--overwrite to redo)" if kept else "")
        + (f"; volumes in {volumes}" if volumes is not None else "")
    )
    report_failures(console, failures, len(table) + len(failures))


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest with the model's image columns and a mask column, or a BIDS dataset root."
        ),
    ],
    mask: Annotated[
        str | None, typer.Option("--mask", help="Mask column (default: the one the model was trained on).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for per_image.csv and metrics.json.", file_okay=False),
    ] = None,
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Score participants the model was trained on (optimistic)."),
    ] = False,
    bids_filter: BidsFilter = None,
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Dice and 95th-percentile Hausdorff distance (mm) per label and per image, against true masks.

    Example: neurodl segment evaluate --model runs/seg runs/seg/test_manifest.tsv --out runs/seg/test
    """
    from neurodl.tasks import segment  # heavy: only when the command runs

    console = err_console()
    loaded = segment.load(model, device=device)
    with file_progress(console, "evaluating", quiet=quiet) as advance:
        metrics, _, failures, warnings = segment.evaluate(
            loaded,
            manifest,
            mask_column=mask,
            allow_overlap=allow_overlap,
            bids_filter=bids_filter or (),
            report_dir=out,
            overwrite=overwrite,
            tta=tta,
            on_image=advance,
        )
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if json_output:
        print_json(metrics)
    if not quiet:
        console.print(
            metrics_table(f"{loaded.mask_column} on {manifest.name} ({metrics['images']} images)", metrics)
        )
        if out is not None and not failures:
            console.print(f"Per-image scores and metrics written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures), report=out is not None)
