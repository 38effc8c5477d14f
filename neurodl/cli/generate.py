"""``neurodl generate``: a GAN that makes new brain images from noise, conditional on a label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import show_made
from neurodl.cli._console import err_console
from neurodl.cli._launch import train_and_report, trained_on_images
from neurodl.cli._model_command import SINGLE, ModelRun, model_command
from neurodl.cli._options import SeedOption, output_folder
from neurodl.cli._render import show_metrics
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import GenerateOptions

app = typer.Typer(
    help="GANs that make new brain images from noise (conditional on a label, e.g. diagnosis): train, sample, evaluate.",
    no_args_is_help=True,
)


ConditionOption = Annotated[
    str | None,
    typer.Option(
        "--condition",
        "-c",
        help="Only this condition (a value of the model's label column, e.g. AD); default: every condition.",
    ),
]


@train_command(app, GenerateOptions)
def train(manifest: Path | None, options: GenerateOptions, run: TrainRun) -> None:
    """Train a GAN to make new images from noise (conditional on --condition); the last epoch is kept.

    A preview PNG per epoch (previews/epoch-NNN.png: samples of each condition from fixed noise) lets you watch training.

    Example: neurodl generate train sample_data/participants.tsv --image t1 --condition diagnosis --test-fraction 0.25 --out runs/gan
    """
    from neurodl.tasks import generate  # heavy (torch, monai): only when the command runs

    train_and_report(generate.train, manifest, options, run, describe=trained_on_images("resized to {size}"))


@model_command(app, "sample", SINGLE)
def sample(
    run: ModelRun,
    n: Annotated[int, typer.Option("--n", "-n", help="Samples per condition.")] = 20,
    condition: ConditionOption = None,
    seed: SeedOption = 0,
    out: Path = output_folder(
        Path("samples"),
        "Folder for sample-*.nii.gz (training grid and affine, the training images' units), samples.csv and samples.png.",
    ),
) -> None:
    """Draw new images from a trained GAN: --n per condition (or of --condition only).

    samples.csv is a manifest (participant_id, the condition column, the image column), so
    other commands read the samples directly, e.g. `neurodl classify evaluate`.

    Example: neurodl generate sample --model runs/gan --n 20 --condition AD --seed 1 -o samples/
    """
    from neurodl.tasks import generate  # heavy: only when the command runs

    loaded = generate.load(run.model, device=run.device)
    table = generate.sample(loaded, out, n=n, condition=condition, seed=seed, overwrite=run.overwrite)
    counts = (
        table[loaded.condition_column].value_counts().sort_index().to_dict()
        if loaded.condition_column
        else {}
    )
    detail = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else ""
    show_made(run, table, f"{len(table)} samples{detail} written to {out} (samples.csv, samples.png)")


@model_command(app, "evaluate", SINGLE)
def evaluate(
    run: ModelRun,
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
    out: Path | None = output_folder(None, "Folder for metrics.json and the samples scored (samples/)."),
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Compare with images of participants the GAN was trained on."),
    ] = False,
) -> None:
    """Score samples against real images, beside real-vs-real (the floor): MMD, Fréchet, MS-SSIM, classifier accuracy.

    The real images are split in two halves A and B by participant; as many samples as A
    holds are drawn with A's conditions; samples vs B is shown next to A vs B.

    Example: neurodl generate evaluate --model runs/gan runs/gan/test_manifest.tsv --classifier runs/cnn --out runs/gan/test
    """
    from rich.table import Table

    from neurodl.tasks import generate, generate_metrics  # heavy: only when the command runs

    loaded = generate.load(run.model, device=run.device)
    metrics, warnings = generate_metrics.evaluate(
        loaded,
        manifest,
        features=features,
        classifier=classifier,
        seed=seed,
        allow_overlap=allow_overlap,
        report_dir=out,
        overwrite=run.overwrite,
        device=run.device,
    )
    title = (
        f"{run.model.name}: {metrics['samples']} samples vs real half B ({metrics['half_b']} images); "
        f"floor: real half A ({metrics['half_a']}) vs B"
    )
    table = Table(title=title)
    for column in ("metric", "generated", "real (floor)", "meaning"):
        table.add_column(column, justify="right" if column in ("generated", "real (floor)") else "left")
    for row in metrics["table"]:
        table.add_row(row["metric"], f"{row['samples']:.4g}", f"{row['real']:.4g}", row["meaning"])
    console = err_console()
    show_metrics(console, run, metrics, warnings, table, saved="", out=out)
    if run.quiet:
        return
    if metrics["note"]:
        console.print(metrics["note"])
    elif classifier is None:
        console.print(
            "Give --features or --classifier (a classify or autoencode run) for MMD and the Fréchet distance."
        )
    if out is not None:
        console.print(f"metrics.json and the samples scored written to {out}")
