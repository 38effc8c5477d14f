"""``neurodl translate``: image-to-image translation with a conditional GAN (pix2pix), e.g. T1w -> T2w."""

from __future__ import annotations

from pathlib import Path

import typer

from neurodl.cli._batch import at_work, evaluate_images, kept, report_written
from neurodl.cli._launch import train_and_report, trained_on_images
from neurodl.cli._model_command import BATCH, Evaluation, ModelRun, evaluate_command, model_command
from neurodl.cli._options import ImageInputs, mask_column, output_folder, preview_flag
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
        describe=trained_on_images("padded to {size}", images="image pairs"),
    )


@model_command(app, "predict", BATCH)
def predict(
    run: ModelRun,
    inputs: ImageInputs,
    out: Path = output_folder(
        Path("translations"),
        "Folder for <image>_to-<target>.nii.gz (each input's grid and affine, the target's units).",
    ),
    preview: bool = preview_flag(
        "Also write a PNG of source, synthetic (and real target, for manifest rows that have it)."
    ),
) -> None:
    """Synthesise the target image of each input, written in the input's own grid and affine.

    Outputs that already exist are kept (use --overwrite to redo); a bad input is reported and the
    others are still processed.

    Example: neurodl translate predict --model runs/t1-to-t2 sample_data/sub-001/anat/sub-001_T1w.nii.gz -o synth/ --preview
    """
    from neurodl.tasks import translate  # heavy: only when the command runs

    with at_work(translate, run, "translating") as (loaded, advance):
        table, failures = translate.predict(loaded, inputs, out, **run.batch(advance, preview=preview))
    noun = f"synthetic {loaded.target_column} image"
    records = table.to_dict(orient="records")
    report_written(run, records, failures, kept=kept(table), noun=noun, out=out)


@evaluate_command(
    app,
    "Manifest with the model's source column(s) and the real target column, or a BIDS dataset root.",
    after="mask",
)
def evaluate(run: Evaluation, mask: str | None = mask_column("MAE and PSNR")) -> None:
    """MAE, PSNR and SSIM of the synthetic vs the real target per image (input grid, target units).

    The trivial baseline (the source linearly rescaled to the target's range) is scored alongside.

    Example: neurodl translate evaluate --model runs/t1-to-t2 runs/t1-to-t2/test_manifest.tsv --out runs/t1-to-t2/test
    """
    from neurodl.tasks import translate  # heavy: only when the command runs

    evaluate_images(
        translate,
        run,
        lambda loaded: f"{loaded.target_column} synthesis",
        saved="Per-image scores and metrics",
        note="; baseline = source rescaled",
        mask_column=mask,
    )
