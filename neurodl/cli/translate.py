"""``neurodl translate``: image-to-image translation with a conditional GAN (pix2pix), e.g. T1w -> T2w."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import file_progress, report_failures
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
from neurodl.cli._render import metrics_table
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import TranslateOptions

app = typer.Typer(
    help="Image-to-image translation (pix2pix conditional GAN): synthesise one contrast from another, e.g. T1w -> T2w.",
    no_args_is_help=True,
)


@train_command(
    app,
    TranslateOptions,
    source_help="Manifest (CSV/TSV): one row per image pair. Or a BIDS dataset root (--source/--target name suffixes, e.g. T1w, T2w). Not needed with --resume.",
)
def train(manifest: Path | None, options: TranslateOptions, run: TrainRun) -> None:
    """Train a pix2pix GAN to synthesise --target images from --source images (selected on validation MAE).

    A preview PNG per epoch (previews/epoch-NNN.png: source, real, synthetic) lets you watch training.

    Example: neurodl translate train sample_data/participants.tsv --source t1 --target t2 --test-fraction 0.2 --out runs/t1-to-t2
    """
    from neurodl.tasks import translate  # heavy (torch, monai): only when the command runs

    train_and_report(
        translate.train,
        manifest,
        options,
        run,
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
    bids_filter: BidsFilter = None,
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
        if out is not None and not failures:
            console.print(f"Per-image scores and metrics written to {out}")
    report_failures(console, failures, metrics["images"] + len(failures), report=out is not None)
