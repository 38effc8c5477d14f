"""``neurodl autoencode``: autoencoders of brain images: latent features, reconstructions, anomaly maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import (
    at_work,
    check_output_file,
    evaluate_images,
    kept,
    report_failures,
    report_written,
    show_made,
    write_table,
)
from neurodl.cli._console import err_console
from neurodl.cli._launch import train_and_report, trained_on_images
from neurodl.cli._model_command import (
    BATCH,
    SINGLE,
    TABLE,
    Evaluation,
    ModelRun,
    evaluate_command,
    model_command,
)
from neurodl.cli._options import ImageInputs, mask_column, output_folder, output_table, preview_flag
from neurodl.cli._render import counted
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import AutoencodeOptions

app = typer.Typer(
    help="Autoencoders (AE, VAE) of NIfTI volumes or slices: latent features, reconstructions, anomaly maps.",
    no_args_is_help=True,
)


@train_command(app, AutoencodeOptions)
def train(manifest: Path | None, options: AutoencodeOptions, run: TrainRun) -> None:
    """Train an autoencoder to reconstruct images; write a run directory (monitored on validation loss).

    Example: neurodl train-ae sample_data/participants.tsv --image t1 --model vae --test-fraction 0.2 --out runs/ae
    """
    from neurodl.tasks import autoencode  # heavy (torch, monai): only when the command runs

    train_and_report(autoencode.train, manifest, options, run, describe=trained_on_images("size {size}"))


@model_command(app, "encode", TABLE)
def encode(
    run: ModelRun,
    inputs: ImageInputs,
    output: Path | None = output_table("CSV of latent features to write (default: stdout)."),
) -> None:
    """Latent code per image: participant_id, image, latent_1..latent_k (+ the manifest's other columns).

    The table is a biomarker table: `neurodl biomarkers train latents.csv --features latent_1,latent_2 ...`.

    Example: neurodl autoencode encode --model runs/ae sample_data/participants.tsv -o latents.csv
    """
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    check_output_file(output, inputs, run.overwrite)
    with at_work(autoencode, run, "encoding") as (loaded, advance):
        table, failures = autoencode.encode(loaded, inputs, **run.batch(advance))
    if len(table):
        codes = f"{counted(len(table), 'latent code')} ({loaded.latent_dim} features)"
        write_table(table, output, codes)
    report_failures(err_console(), failures, len(table) + len(failures))


@model_command(app, "reconstruct", BATCH)
def reconstruct(
    run: ModelRun,
    inputs: ImageInputs,
    out: Path = output_folder(
        Path("reconstructions"),
        "Folder for <image>_recon.nii.gz and <image>_error.nii.gz (each input's grid and affine).",
    ),
    preview: bool = preview_flag("Also write a PNG of input, reconstruction and error slices.", default=True),
) -> None:
    """Reconstruct images and write the absolute reconstruction error (an anomaly map) in each input's grid.

    Intensities are in the run's normalised units (e.g. z-scores). Outputs that already exist are kept
    (use --overwrite to redo); a bad input is reported and the others are still processed.

    Example: neurodl autoencode reconstruct --model runs/ae sample_data/sub-001/anat/sub-001_T1w.nii.gz -o recon/
    """
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    with at_work(autoencode, run, "reconstructing") as (loaded, advance):
        table, failures = autoencode.reconstruct(loaded, inputs, out, **run.batch(advance, preview=preview))
    report_written(
        run, table.to_dict(orient="records"), failures, kept=kept(table), noun="reconstruction", out=out
    )


@evaluate_command(app, "Manifest with the model's image columns, or a BIDS dataset root.", after="mask")
def evaluate(run: Evaluation, mask: str | None = mask_column("score")) -> None:
    """MSE, MAE, PSNR and SSIM of the reconstructions, per image, in the preprocessed (normalised) space.

    Example: neurodl autoencode evaluate --model runs/ae runs/ae/test_manifest.tsv --out runs/ae/test
    """
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    evaluate_images(
        autoencode, run, lambda _: "reconstruction", saved="Per-image scores and metrics", mask_column=mask
    )


@model_command(app, "sample", SINGLE)
def sample(
    run: ModelRun,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images to draw.")] = 20,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed: the same seed gives the same images.")
    ] = 0,
    out: Path = output_folder(
        Path("vae-samples"),
        "Folder for sample-NNN.nii.gz (the training grid and its affine), samples.csv and samples.png.",
    ),
) -> None:
    """Draw new images from a VAE: decode codes drawn from its prior N(0, I).

    Intensities are in the run's normalised units (e.g. z-scores), like reconstructions.

    Example: neurodl autoencode sample --model runs/vae --n 20 --seed 1 -o vae-samples/
    """
    from neurodl.tasks import autoencode, autoencode_sampling  # heavy: only when the command runs

    loaded = autoencode.load(run.model, device=run.device)
    table = autoencode_sampling.sample(loaded, out, n=n, seed=seed, overwrite=run.overwrite)
    show_made(run, table, f"{counted(len(table), 'sample')} written to {out} (samples.csv, samples.png)")


@model_command(app, "interpolate", SINGLE)
def interpolate(
    run: ModelRun,
    first: Annotated[Path, typer.Argument(help="Image at the start of the path (NIfTI).", dir_okay=False)],
    second: Annotated[Path, typer.Argument(help="Image at the end of the path (NIfTI).", dir_okay=False)],
    steps: Annotated[int, typer.Option("--steps", help="Images on the path, both ends included.")] = 8,
    out: Path = output_folder(
        Path("interpolation"),
        "Folder for interp-NN.nii.gz (the training grid and its affine), interpolation.csv and .png.",
    ),
) -> None:
    """Decode the straight line between two images' codes: what the model varies between them.

    Example: neurodl autoencode interpolate --model runs/vae sample_data/sub-001/anat/sub-001_T1w.nii.gz sample_data/sub-002/anat/sub-002_T1w.nii.gz -o interp/
    """
    from neurodl.tasks import autoencode, autoencode_sampling  # heavy: only when the command runs

    loaded = autoencode.load(run.model, device=run.device)
    table = autoencode_sampling.interpolate(loaded, first, second, out, steps=steps, overwrite=run.overwrite)
    show_made(run, table, f"{len(table)} images from {first.name} to {second.name} written to {out}")
