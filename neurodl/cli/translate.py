"""``neurodl translate``: image-to-image translation with a conditional GAN (pix2pix), e.g. T1w -> T2w."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli import _train_options as T
from neurodl.cli._batch import file_progress, report_failures
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
    QuietFlag,
    ShardOption,
)
from neurodl.cli._render import metrics_table
from neurodl.config import TranslateOptions

app = typer.Typer(
    help="Image-to-image translation (pix2pix conditional GAN): synthesise one contrast from another, e.g. T1w -> T2w.",
    no_args_is_help=True,
)

_D = TranslateOptions()
_I = "Images and preprocessing"
_M = "Model"


@app.command("train")
def train(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None,
        typer.Argument(
            help="Manifest (CSV/TSV): one row per image pair. Or a BIDS dataset root (--source/--target name suffixes, e.g. T1w, T2w). Not needed with --resume."
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            "-s",
            help="Source image column(s); several = several input channels (default: t1).",
            rich_help_panel=_I,
        ),
    ] = None,
    target: Annotated[
        str,
        typer.Option("--target", "-t", help="Column of the images to synthesise.", rich_help_panel=_I),
    ] = _D.target,
    resample_target: Annotated[
        bool,
        typer.Option(
            "--resample-target",
            help="Resample targets on another grid onto their source (trilinear) instead of refusing them.",
            rich_help_panel=_I,
        ),
    ] = False,
    participant: T.Participant = _D.images.participant,
    bids_filter: T.BidsFilter = None,
    spacing: T.Spacing = "",
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="Minimum array size after resampling (padded up to it, never cropped); default: the median field of view.",
            rich_help_panel=_I,
        ),
    ] = "",
    normalize: Annotated[
        str,
        typer.Option(
            "--normalize",
            help="Source intensities: zscore, minmax or percentile (the target keeps its units).",
            rich_help_panel=_I,
        ),
    ] = _D.images.normalize,
    crop_foreground: T.CropForeground = False,
    cache: T.Cache = _D.images.cache,
    cache_dir: T.CacheDir = _D.images.cache_dir,
    cache_budget: T.CacheBudget = _D.images.cache_budget,
    workers: T.Workers = _D.images.workers,
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Generator: unet or attention_unet.", rich_help_panel=_M),
    ] = _D.model,
    discriminator: Annotated[
        str,
        typer.Option(
            "--discriminator", help="Discriminator: patchgan or patchgan_small.", rich_help_panel=_M
        ),
    ] = _D.discriminator,
    dims: Annotated[
        int,
        typer.Option(
            "--dims",
            help="2: axial slices (fast, the default); 3: 3D patches (sliding windows at prediction).",
            rich_help_panel=_M,
        ),
    ] = _D.dims,
    gan_loss: Annotated[
        str,
        typer.Option("--gan-loss", help="Adversarial loss: lsgan, vanilla or hinge.", rich_help_panel=_M),
    ] = _D.gan_loss,
    lambda_l1: Annotated[
        float,
        typer.Option(
            "--lambda-l1",
            help="Weight of the L1 loss against the adversarial loss (pix2pix: 100; 0: pure GAN).",
            rich_help_panel=_M,
        ),
    ] = _D.lambda_l1,
    lr_d: Annotated[
        float,
        typer.Option("--lr-d", help="Discriminator learning rate (0: the same as --lr).", rich_help_panel=_M),
    ] = _D.lr_d,
    width: Annotated[
        int,
        typer.Option(
            "--width",
            help="Filters of the first level of both networks (doubled per level).",
            rich_help_panel=_M,
        ),
    ] = _D.width,
    patch: Annotated[
        str,
        typer.Option(
            "--patch",
            help="Training patch / inference window: one or three multiples of 16 (default: 2D whole slices, 3D 32).",
            rich_help_panel=_M,
        ),
    ] = "",
    slices: Annotated[
        int,
        typer.Option(
            "--slices",
            help="2D: central axial slices per volume for training (0: all with head).",
            rich_help_panel=_M,
        ),
    ] = _D.slices,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of participants for validation / model selection.")
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path(
        "runs/translate"
    ),
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
    """Train a pix2pix GAN to synthesise --target images from --source images (selected on validation MAE).

    A preview PNG per epoch (previews/epoch-NNN.png: source, real, synthetic) lets you watch training.

    Example: neurodl translate train sample_data/participants.tsv --source t1 --target t2 --test-fraction 0.2 --out runs/t1-to-t2
    """
    from neurodl.tasks import translate  # heavy (torch, monai): only when the command runs

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
        "translate",
    ):
        values.pop(name, None)
    options = resolve_options(
        TranslateOptions,
        ctx,
        values,
        config_file=config,
        resume=resume,
        converters={
            "image": split_list,
            "spacing": parse_floats,
            "size": parse_ints,
            "patch": parse_ints,
            "batch_size": parse_batch_size,
            "track": split_list,
        },
    )
    train_and_report(
        translate.train,
        manifest,
        options,
        out,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        json_output=json_output,
        describe=lambda s: (
            f"{s['images']} image pairs, {s['participants']} participants; resampled to {s['preprocessing']['spacing']} mm, padded to {s['preprocessing']['size']}"
        ),
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
            help="Folder for <image>_to-<target>.nii.gz (each input's grid and affine, the target's units).",
            file_okay=False,
        ),
    ] = Path("translations"),
    preview: Annotated[
        bool,
        typer.Option(
            "--preview/--no-preview",
            help="Also write a PNG of source, synthetic (and real target, for manifest rows that have it).",
        ),
    ] = False,
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Synthesise the target image of each input, written in the input's own grid and affine.

    Outputs that already exist are kept (use --overwrite to redo); a bad input is reported and the
    others are still processed.

    Example: neurodl translate predict --model runs/t1-to-t2 sample_data/sub-001/anat/sub-001_T1w.nii.gz -o synth/ --preview
    """
    from neurodl.tasks import translate  # heavy: only when the command runs

    console = err_console()
    loaded = translate.load(model, device=device)
    with file_progress(console, "translating", quiet=quiet) as advance:
        table, failures = translate.predict(
            loaded, inputs, out, overwrite=overwrite, preview=preview, shard=shard, on_image=advance
        )
    if json_output:
        print_json(table.to_dict(orient="records"))
    written = int((table["status"] == "written").sum()) if len(table) else 0
    kept = len(table) - written
    if not quiet:
        console.print(
            f"{written} synthetic {loaded.target_column} {'image' if written == 1 else 'images'} written to {out}"
            + (f"; {kept} existing kept (--overwrite to redo)" if kept else "")
        )
    report_failures(console, failures, len(table) + len(failures))


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest with the model's source column(s) and the real target column, or a BIDS dataset root."
        ),
    ],
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask", help="Column of label images: MAE and PSNR only inside mask > 0 (SSIM: whole image)."
        ),
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
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """MAE, PSNR and SSIM of the synthetic vs the real target per image (input grid, target units).

    The trivial baseline (the source linearly rescaled to the target's range) is scored alongside.

    Example: neurodl translate evaluate --model runs/t1-to-t2 runs/t1-to-t2/test_manifest.tsv --out runs/t1-to-t2/test
    """
    from neurodl.tasks import translate  # heavy: only when the command runs

    console = err_console()
    loaded = translate.load(model, device=device)
    with file_progress(console, "evaluating", quiet=quiet) as advance:
        metrics, _, failures, warnings = translate.evaluate(
            loaded,
            manifest,
            mask_column=mask,
            allow_overlap=allow_overlap,
            bids_filter=bids_filter or (),
            report_dir=out,
            overwrite=overwrite,
            on_image=advance,
        )
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if json_output:
        print_json(metrics)
    if not quiet:
        console.print(
            metrics_table(
                f"{loaded.target_column} synthesis on {manifest.name} ({metrics['images']} images; baseline = source rescaled)",
                {k: v for k, v in metrics.items() if k not in ("units",)},
            )
        )
        if out is not None:
            console.print(f"Per-image scores and metrics written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures))
