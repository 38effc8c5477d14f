"""``neurodl segment``: 3D segmentation, masks written in each input's own space."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli import _train_options as T
from neurodl.cli._batch import check_output_file, file_progress, report_failures
from neurodl.cli._config import parse_batch_size, parse_floats, parse_ints, resolve_options, split_list
from neurodl.cli._console import err_console, print_json
from neurodl.cli._launch import train_and_report
from neurodl.cli._options import (
    ConfigOption,
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
from neurodl.config import SegmentOptions

app = typer.Typer(
    help="Segment NIfTI volumes (e.g. CSF, grey and white matter) with 3D U-Nets; label volumes in mL.",
    no_args_is_help=True,
)

_D = SegmentOptions()
_I = "Images and preprocessing"
_M = "Model"
Overlap = Annotated[
    float | None,
    typer.Option("--overlap", help="Sliding-window overlap between patches, 0-0.9 (default: the run's)."),
]


@app.command("train")
def train(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None,
        typer.Argument(
            help="Manifest (CSV/TSV): one row per image, image and mask columns. Or a BIDS dataset root (--image/--mask name suffixes, e.g. T1w, dseg). Not needed with --resume.",
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            "-i",
            help="Image column(s); several = several input channels (default: t1).",
            rich_help_panel=_I,
        ),
    ] = None,
    mask: Annotated[
        str, typer.Option("--mask", help="Column of label maps (integer NIfTI on the image's grid).")
    ] = _D.mask,
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="Label names: '1=CSF,2=GM,3=WM' or a JSON/TSV table (default: dseg.tsv beside the manifest).",
        ),
    ] = _D.labels,
    participant: T.Participant = _D.images.participant,
    bids_filter: T.BidsFilter = None,
    spacing: T.Spacing = "",
    normalize: T.Normalize = _D.images.normalize,
    crop_foreground: T.CropForeground = False,
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            help="none, light or strong (spatial transforms move the mask too).",
            rich_help_panel=_I,
        ),
    ] = _D.images.augment,
    cache: T.Cache = _D.images.cache,
    cache_dir: T.CacheDir = _D.images.cache_dir,
    cache_budget: T.CacheBudget = _D.images.cache_budget,
    workers: T.Workers = _D.images.workers,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Network from `neurodl models segment`: unet, segresnet, attention_unet, swin_unetr.",
            rich_help_panel=_M,
        ),
    ] = _D.model,
    patch: Annotated[
        str,
        typer.Option(
            "--patch",
            help="Training patch (and sliding window) size: one or three integers, e.g. 96 on a GPU.",
            rich_help_panel=_M,
        ),
    ] = ",".join(map(str, _D.patch)),
    samples_per_image: Annotated[
        int,
        typer.Option(
            "--samples-per-image",
            help="Patches drawn from each image per epoch (half centred on foreground).",
            rich_help_panel=_M,
        ),
    ] = _D.samples_per_image,
    loss: Annotated[
        str, typer.Option("--loss", help="dicece (Dice + cross-entropy), dice or ce.", rich_help_panel=_M)
    ] = _D.loss,
    dropout: Annotated[
        float, typer.Option("--dropout", help="Dropout in the network.", rich_help_panel=_M)
    ] = _D.dropout,
    overlap: Annotated[
        float,
        typer.Option(
            "--overlap", help="Sliding-window overlap for validation and prediction.", rich_help_panel=_M
        ),
    ] = _D.overlap,
    cv: Annotated[
        int,
        typer.Option("--cv", help="K-fold cross-validation by participant (0: one train/validation split)."),
    ] = _D.cv,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of participants for validation / early stopping.")
    ] = _D.val_fraction,
    test_fraction: Annotated[
        float,
        typer.Option(
            "--test-fraction",
            help="Share of participants held out entirely, scored at the end and written to test_manifest.tsv.",
        ),
    ] = _D.test_fraction,
    epochs: T.Epochs = _D.train.epochs,
    batch_size: T.BatchSize = str(_D.train.batch_size),
    optimizer: T.Optimizer = _D.train.optimizer,
    lr: T.LearningRate = _D.train.lr,
    momentum: T.Momentum = _D.train.momentum,
    weight_decay: T.WeightDecay = _D.train.weight_decay,
    scheduler: T.Scheduler = _D.train.scheduler,
    grad_clip: T.GradClip = _D.train.grad_clip,
    patience: T.Patience = _D.train.patience,
    min_delta: T.MinDelta = _D.train.min_delta,
    monitor: T.Monitor = _D.train.monitor,
    seed: T.Seed = _D.train.seed,
    deterministic: T.Deterministic = _D.train.deterministic,
    device: T.Device = _D.train.device,
    precision: T.Precision = _D.train.precision,
    track: T.Track = None,
    track_uri: T.TrackUri = "",
    experiment: T.Experiment = "",
    distributed: T.Distributed = _D.train.distributed,
    compile: T.Compile = _D.train.compile,
    channels_last: T.ChannelsLast = _D.train.channels_last,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path("runs/segment"),
    config: ConfigOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted run in --out (its saved options and manifest are used).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Train a segmenter on images and label maps; write a run directory (monitored on validation Dice).

    Example: neurodl segment train sample_data/participants.tsv --image t1 --mask dseg --test-fraction 0.2 --out runs/seg
    """
    from neurodl.tasks import segment  # heavy (torch, monai): only when the command runs

    values = dict(locals())
    for name in (
        "ctx",
        "manifest",
        "out",
        "config",
        "resume",
        "overwrite",
        "quiet",
        "json_output",
        "segment",
    ):
        values.pop(name, None)
    options = resolve_options(
        SegmentOptions,
        ctx,
        values,
        config_file=config,
        resume=resume,
        converters={
            "image": split_list,
            "spacing": parse_floats,
            "patch": parse_ints,
            "batch_size": parse_batch_size,
            "track": split_list,
        },
    )

    def describe(summary: dict) -> str:
        names = ", ".join(f"{v}={n}" for v, n in summary["labels"].items() if int(v) != 0)
        return f"{summary['images']} images, {summary['participants']} participants; labels {names}; resampled to {summary['preprocessing']['spacing']} mm"

    train_and_report(
        segment.train,
        manifest,
        options,
        out,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        json_output=json_output,
        describe=describe,
    )


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
    bids_filter: T.BidsFilter = None,
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
    console.print(
        metrics_table(f"{loaded.mask_column} on {manifest.name} ({metrics['images']} images)", metrics)
    )
    if out is not None and not failures:
        console.print(f"Per-image scores and metrics written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures), report=out is not None)
