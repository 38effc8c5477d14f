"""``neurodl autoencode``: autoencoders of brain images: latent features, reconstructions, anomaly maps."""

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
from neurodl.config import AutoencodeOptions

app = typer.Typer(
    help="Autoencoders (AE, VAE) of NIfTI volumes or slices: latent features, reconstructions, anomaly maps.",
    no_args_is_help=True,
)


@train_command(
    app,
    AutoencodeOptions,
    source_help="Manifest (CSV/TSV): one row per image. Or a BIDS dataset root (--image names a suffix, e.g. T1w). Not needed with --resume.",
)
def train(manifest: Path | None, options: AutoencodeOptions, run: TrainRun) -> None:
    """Train an autoencoder to reconstruct images; write a run directory (monitored on validation loss).

    Example: neurodl train-ae sample_data/participants.tsv --image t1 --model vae --test-fraction 0.2 --out runs/ae
    """
    from neurodl.tasks import autoencode  # heavy (torch, monai): only when the command runs

    train_and_report(
        autoencode.train,
        manifest,
        options,
        run,
        describe=lambda s: (
            f"{s['images']} images, {s['participants']} participants; resampled to {s['preprocessing']['spacing']} mm, size {s['preprocessing']['size']}"
        ),
    )


@app.command("encode")
def encode(
    model: ModelDirOption,
    inputs: ImageInputs,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="CSV of latent features to write (default: stdout).", dir_okay=False
        ),
    ] = None,
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
) -> None:
    """Latent code per image: participant_id, image, latent_1..latent_k (+ the manifest's other columns).

    The table is a biomarker table: `neurodl biomarkers train latents.csv --features latent_1,latent_2 ...`.

    Example: neurodl autoencode encode --model runs/ae sample_data/participants.tsv -o latents.csv
    """
    import sys

    from neurodl.io.atomic import atomic_output
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    check_output_file(output, inputs, overwrite)
    console = err_console()
    loaded = autoencode.load(model, device=device)
    with file_progress(console, "encoding", quiet=quiet) as advance:
        table, failures = autoencode.encode(loaded, inputs, shard=shard, on_image=advance)
    if len(table):
        if output is None:
            table.to_csv(sys.stdout, index=False)
        else:
            with atomic_output(output) as tmp:
                table.to_csv(tmp, index=False, sep="\t" if output.suffix.lower() == ".tsv" else ",")
            if not quiet:
                console.print(
                    f"{counted(len(table), 'latent code')} ({loaded.latent_dim} features) written to {output}"
                )
    report_failures(console, failures, len(table) + len(failures))


@app.command("reconstruct")
def reconstruct(
    model: ModelDirOption,
    inputs: ImageInputs,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for <image>_recon.nii.gz and <image>_error.nii.gz (each input's grid and affine).",
            file_okay=False,
        ),
    ] = Path("reconstructions"),
    preview: Annotated[
        bool,
        typer.Option(
            "--preview/--no-preview", help="Also write a PNG of input, reconstruction and error slices."
        ),
    ] = True,
    overwrite: OverwriteFlag = False,
    shard: ShardOption = None,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Reconstruct images and write the absolute reconstruction error (an anomaly map) in each input's grid.

    Intensities are in the run's normalised units (e.g. z-scores). Outputs that already exist are kept
    (use --overwrite to redo); a bad input is reported and the others are still processed.

    Example: neurodl autoencode reconstruct --model runs/ae sample_data/sub-001/anat/sub-001_T1w.nii.gz -o recon/
    """
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    console = err_console()
    loaded = autoencode.load(model, device=device)
    with file_progress(console, "reconstructing", quiet=quiet) as advance:
        table, failures = autoencode.reconstruct(
            loaded, inputs, out, overwrite=overwrite, preview=preview, shard=shard, on_image=advance
        )
    if json_output:
        print_json(table.to_dict(orient="records"))
    written = int((table["status"] == "written").sum()) if len(table) else 0
    kept = len(table) - written
    console.print(
        f"{counted(written, 'reconstruction')} written to {out}"
        + (f"; {kept} existing kept (--overwrite to redo)" if kept else "")
    )
    report_failures(console, failures, len(table) + len(failures))


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    manifest: Annotated[
        Path, typer.Argument(help="Manifest with the model's image columns, or a BIDS dataset root.")
    ],
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask", help="Column of label images: score only inside mask > 0 (SSIM: whole image)."
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
    bids_filter: BidsFilter = None,
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """MSE, MAE, PSNR and SSIM of the reconstructions, per image, in the preprocessed (normalised) space.

    Example: neurodl autoencode evaluate --model runs/ae runs/ae/test_manifest.tsv --out runs/ae/test
    """
    from neurodl.tasks import autoencode  # heavy: only when the command runs

    console = err_console()
    loaded = autoencode.load(model, device=device)
    with file_progress(console, "evaluating", quiet=quiet) as advance:
        metrics, _, failures, warnings = autoencode.evaluate(
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
            metrics_table(f"reconstruction on {manifest.name} ({metrics['images']} images)", metrics)
        )
        if out is not None and not failures:
            console.print(f"Per-image scores and metrics written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures), report=out is not None)


@app.command("sample")
def sample(
    model: ModelDirOption,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images to draw.")] = 20,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed: the same seed gives the same images.")
    ] = 0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for sample-NNN.nii.gz (the training grid and its affine), samples.csv and samples.png.",
            file_okay=False,
        ),
    ] = Path("vae-samples"),
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Draw new images from a VAE: decode codes drawn from its prior N(0, I).

    Intensities are in the run's normalised units (e.g. z-scores), like reconstructions.

    Example: neurodl autoencode sample --model runs/vae --n 20 --seed 1 -o vae-samples/
    """
    from neurodl.tasks import autoencode, autoencode_sampling  # heavy: only when the command runs

    loaded = autoencode.load(model, device=device)
    table = autoencode_sampling.sample(loaded, out, n=n, seed=seed, overwrite=overwrite)
    if json_output:
        print_json(table.to_dict(orient="records"))
    if not quiet:
        err_console().print(f"{counted(len(table), 'sample')} written to {out} (samples.csv, samples.png)")


@app.command("interpolate")
def interpolate(
    model: ModelDirOption,
    first: Annotated[Path, typer.Argument(help="Image at the start of the path (NIfTI).", dir_okay=False)],
    second: Annotated[Path, typer.Argument(help="Image at the end of the path (NIfTI).", dir_okay=False)],
    steps: Annotated[int, typer.Option("--steps", help="Images on the path, both ends included.")] = 8,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for interp-NN.nii.gz (the training grid and its affine), interpolation.csv and .png.",
            file_okay=False,
        ),
    ] = Path("interpolation"),
    overwrite: OverwriteFlag = False,
    device: DeviceOption = "auto",
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Decode the straight line between two images' codes: what the model varies between them.

    Example: neurodl autoencode interpolate --model runs/vae sample_data/sub-001/anat/sub-001_T1w.nii.gz sample_data/sub-002/anat/sub-002_T1w.nii.gz -o interp/
    """
    from neurodl.tasks import autoencode, autoencode_sampling  # heavy: only when the command runs

    loaded = autoencode.load(model, device=device)
    table = autoencode_sampling.interpolate(loaded, first, second, out, steps=steps, overwrite=overwrite)
    if json_output:
        print_json(table.to_dict(orient="records"))
    if not quiet:
        err_console().print(f"{len(table)} images from {first.name} to {second.name} written to {out}")
