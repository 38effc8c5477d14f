"""``neurodl generate``: a GAN that makes new brain images from noise, conditional on a label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli import _train_options as T
from neurodl.cli._config import parse_batch_size, parse_floats, parse_ints, resolve_options, split_list
from neurodl.cli._console import err_console, print_json
from neurodl.cli._launch import train_and_report
from neurodl.cli._options import (
    ConfigOption,
    DeviceOption,
    JsonFlag,
    ModelDirOption,
    OverwriteFlag,
    QuietFlag,
    SeedOption,
)
from neurodl.config import GenerateOptions

app = typer.Typer(
    help="GANs that make new brain images from noise (conditional on a label, e.g. diagnosis): train, sample, evaluate.",
    no_args_is_help=True,
)

_D = GenerateOptions()
_I = "Images and preprocessing"
_M = "Model"

ConditionOption = Annotated[
    str | None,
    typer.Option(
        "--condition",
        "-c",
        help="Only this condition (a value of the model's label column, e.g. AD); default: every condition.",
    ),
]


@app.command("train")
def train(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None,
        typer.Argument(
            help="Manifest (CSV/TSV): one row per image. Or a BIDS dataset root (--image names a suffix, e.g. T1w). Not needed with --resume."
        ),
    ] = None,
    image: Annotated[
        str, typer.Option("--image", "-i", help="Column of the images to learn.", rich_help_panel=_I)
    ] = _D.images.image[0],
    condition: Annotated[
        str,
        typer.Option(
            "--condition",
            "-c",
            help="Label column to condition on (one generator for every value, e.g. diagnosis); empty: unconditional.",
            rich_help_panel=_I,
        ),
    ] = _D.condition,
    participant: T.Participant = _D.images.participant,
    bids_filter: T.BidsFilter = None,
    spacing: T.Spacing = "",
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="Grid the images are resized to (one or three multiples of 8); heads are downsampled to fit, not cut.",
            rich_help_panel=_I,
        ),
    ] = "32",
    crop_foreground: T.CropForeground = False,
    cache: T.Cache = _D.images.cache,
    cache_dir: T.CacheDir = _D.images.cache_dir,
    workers: T.Workers = _D.images.workers,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Generator: dcgan.", rich_help_panel=_M)
    ] = _D.model,
    discriminator: Annotated[
        str, typer.Option("--discriminator", help="Discriminator: projection.", rich_help_panel=_M)
    ] = _D.discriminator,
    dims: Annotated[
        int,
        typer.Option(
            "--dims", help="3: whole volumes (the default); 2: central axial slices.", rich_help_panel=_M
        ),
    ] = _D.dims,
    gan_loss: Annotated[
        str,
        typer.Option(
            "--gan-loss",
            help="Adversarial loss: vanilla (the minimax loss, the default), hinge or lsgan.",
            rich_help_panel=_M,
        ),
    ] = _D.gan_loss,
    latent_dim: Annotated[
        int, typer.Option("--latent-dim", help="Length of the noise vector.", rich_help_panel=_M)
    ] = _D.latent_dim,
    width: Annotated[
        int,
        typer.Option("--width", help="Filters of the finest level of both networks.", rich_help_panel=_M),
    ] = _D.width,
    lr_d: Annotated[
        float,
        typer.Option("--lr-d", help="Discriminator learning rate (0: the same as --lr).", rich_help_panel=_M),
    ] = _D.lr_d,
    slices: Annotated[
        int,
        typer.Option("--slices", help="2D: central axial slices per volume to learn.", rich_help_panel=_M),
    ] = _D.slices,
    test_fraction: Annotated[
        float,
        typer.Option(
            "--test-fraction",
            help="Share of participants held out (test_manifest.tsv), the real images `generate evaluate` compares with.",
        ),
    ] = _D.test_fraction,
    epochs: T.Epochs = _D.train.epochs,
    batch_size: T.BatchSize = str(_D.train.batch_size),
    optimizer: T.Optimizer = _D.train.optimizer,
    lr: T.LearningRate = _D.train.lr,
    weight_decay: T.WeightDecay = _D.train.weight_decay,
    grad_clip: T.GradClip = _D.train.grad_clip,
    seed: T.Seed = _D.train.seed,
    deterministic: T.Deterministic = _D.train.deterministic,
    device: T.Device = _D.train.device,
    precision: T.Precision = _D.train.precision,
    distributed: T.Distributed = _D.train.distributed,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path("runs/generate"),
    config: ConfigOption = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the interrupted run in --out (its saved options are used)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Train a GAN to make new images from noise (conditional on --condition); the last epoch is kept.

    A preview PNG per epoch (previews/epoch-NNN.png: samples of each condition from fixed noise) lets you watch training.

    Example: neurodl generate train sample_data/participants.tsv --image t1 --condition diagnosis --test-fraction 0.25 --out runs/gan
    """
    from neurodl.tasks import generate  # heavy (torch, monai): only when the command runs

    values = {
        name: value
        for name, value in locals().items()
        if name
        not in ("ctx", "manifest", "out", "config", "resume", "overwrite", "quiet", "json_output", "generate")
    }
    options = resolve_options(
        GenerateOptions,
        ctx,
        values,
        config_file=config,
        resume=resume,
        converters={
            "image": split_list,
            "spacing": parse_floats,
            "size": parse_ints,
            "batch_size": parse_batch_size,
        },
    )
    train_and_report(
        generate.train,
        manifest,
        options,
        out,
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        json_output=json_output,
        describe=lambda s: (
            f"{s['images']} images, {s['participants']} participants; resampled to {s['preprocessing']['spacing']} mm, resized to {s['preprocessing']['size']}"
        ),
    )


@app.command("sample")
def sample(
    model: ModelDirOption,
    n: Annotated[int, typer.Option("--n", "-n", help="Samples per condition.")] = 20,
    condition: ConditionOption = None,
    seed: SeedOption = 0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for sample-*.nii.gz (training grid and affine, the training images' units), samples.csv and samples.png.",
            file_okay=False,
        ),
    ] = Path("samples"),
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Draw new images from a trained GAN: --n per condition (or of --condition only).

    samples.csv is a manifest (participant_id, the condition column, the image column), so
    other commands read the samples directly, e.g. `neurodl classify evaluate`.

    Example: neurodl generate sample --model runs/gan --n 20 --condition AD --seed 1 -o samples/
    """
    from neurodl.tasks import generate  # heavy: only when the command runs

    loaded = generate.load(model, device=device)
    table = generate.sample(loaded, out, n=n, condition=condition, seed=seed, overwrite=overwrite)
    if json_output:
        print_json(table.to_dict(orient="records"))
    if not quiet:
        counts = (
            table[loaded.condition_column].value_counts().sort_index().to_dict()
            if loaded.condition_column
            else {}
        )
        detail = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else ""
        err_console().print(f"{len(table)} samples{detail} written to {out} (samples.csv, samples.png)")


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest of real held-out images (the model's image column, and its condition column), or a BIDS dataset root.",
        ),
    ],
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="classify or autoencode run whose features MMD and the Fréchet distance use (default: --classifier).",
        ),
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(
            "--classifier",
            help="classify run trained on the condition column: the share of samples it gives the asked condition.",
        ),
    ] = None,
    seed: SeedOption = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for metrics.json and the samples scored (samples/).", file_okay=False
        ),
    ] = None,
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Compare with images of participants the GAN was trained on."),
    ] = False,
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Score samples against real images, beside real-vs-real (the floor): MMD, Fréchet, MS-SSIM, classifier accuracy.

    The real images are split in two halves A and B by participant; as many samples as A
    holds are drawn with A's conditions; samples vs B is shown next to A vs B.

    Example: neurodl generate evaluate --model runs/gan runs/gan/test_manifest.tsv --classifier runs/cnn --out runs/gan/test
    """
    from rich.table import Table

    from neurodl.tasks import generate, generate_metrics  # heavy: only when the command runs

    console = err_console()
    loaded = generate.load(model, device=device)
    metrics, warnings = generate_metrics.evaluate(
        loaded,
        manifest,
        features=features,
        classifier=classifier,
        seed=seed,
        allow_overlap=allow_overlap,
        report_dir=out,
        overwrite=overwrite,
        device=device,
    )
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if json_output:
        print_json(metrics)
    if quiet:
        return
    table = Table(
        title=f"{model.name}: {metrics['samples']} samples vs real half B ({metrics['half_b']} images); "
        f"floor: real half A ({metrics['half_a']}) vs B"
    )
    for column in ("metric", "generated", "real (floor)", "meaning"):
        table.add_column(column, justify="right" if column in ("generated", "real (floor)") else "left")
    for row in metrics["table"]:
        table.add_row(row["metric"], f"{row['samples']:.4g}", f"{row['real']:.4g}", row["meaning"])
    console.print(table)
    if metrics["note"]:
        console.print(metrics["note"])
    elif classifier is None:
        console.print(
            "Give --features or --classifier (a classify or autoencode run) for MMD and the Fréchet distance."
        )
    if out is not None:
        console.print(f"metrics.json and the samples scored written to {out}")
