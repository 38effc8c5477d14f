"""Generate: a GAN that makes new brain images from noise, optionally conditional on a label.

The generator turns a noise vector (and the asked-for condition, e.g. AD or CN,
as a learned embedding) into an image; the discriminator learns to tell those
from training images of that condition (a projection discriminator), and the
generator learns to fool it. Each network has its own optimiser (the engine's
``optimizer_groups``). ``dims`` 3 trains on whole volumes resized to a fixed grid,
``dims`` 2 on the central axial slices of each volume.

Intensities: images are resampled and resized like every image task, but keep
their own units, mapped to the generator's range -1..1 by a :class:`TargetScale`
fitted on the training images and recorded in ``preprocessing.json``, so samples
are written back in the training images' units, in the training grid with its
real-world affine. Scoring is in :mod:`neurodl.tasks.generate_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import GenerateOptions, to_dict
from neurodl.data.batches import ImageBatches
from neurodl.data.images import ImagePreprocessing
from neurodl.data.volumes import PairedVolumes
from neurodl.engine import Callback
from neurodl.errors import DataError, OutputError, UsageError
from neurodl.io.rundir import WEIGHTS_FILE, RunDirectory
from neurodl.io.tables import require_columns
from neurodl.models import create_model
from neurodl.tasks import _trained as trained
from neurodl.tasks._driver import Training, trains
from neurodl.tasks._gan import TargetScale, check_networks
from neurodl.tasks._noise_gan import NoiseGAN
from neurodl.tasks._run import write_held_out_manifest
from neurodl.tasks._samples import contact_sheet, grid_slice_affine, save_in_grid, training_grid
from neurodl.tasks.autoencode import central_slices

TASK = "generate"
MAX_CLASSES = 50
PREVIEW_PER_CLASS = 6


class GanImages(torch.utils.data.Dataset):
    """Training images scaled to -1..1 with their class index: whole volumes, or central axial slices."""

    def __init__(
        self,
        volumes: PairedVolumes,
        rows: Sequence[int],
        labels: Sequence[int],
        scale: TargetScale,
        *,
        dims: int,
        slices: int,
        depth: int,
    ) -> None:
        self.volumes = volumes
        self.labels = [int(v) for v in labels]
        self.scale = scale
        self.dims = dims
        planes = central_slices(depth, slices) if dims == 2 else [0]
        self.items = [(int(r), z) for r in rows for z in planes]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row, z = self.items[index]
        image = self.scale.normalize(self.volumes.pair(row)[1])
        if self.dims == 2:
            image = image[..., z]
        return image.contiguous(), torch.tensor(self.labels[row])


def model_spec(
    options: GenerateOptions, size: Sequence[int], classes: int, saved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The networks' description (``preprocessing.json``'s ``model``).

    ``saved``: the run's options as recorded in its config.json; a run from before an
    option existed keeps the old behaviour (no auxiliary head, no minibatch-std channel).
    """
    saved = to_dict(options) if saved is None else saved
    return {
        "name": options.model,
        "discriminator": options.discriminator,
        "dims": options.dims,
        "size": [int(s) for s in size][: options.dims],
        "latent_dim": options.latent_dim,
        "classes": classes,
        "width": options.width,
        "auxiliary": bool(classes) and float(saved.get("aux_weight", 0.0)) > 0,
        "minibatch_std": bool(saved.get("minibatch_std", 0)),
    }


def build_generator(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(
        TASK,
        spec["name"],
        spatial_dims=int(spec["dims"]),
        size=[int(s) for s in spec["size"]],
        latent_dim=int(spec["latent_dim"]),
        classes=int(spec["classes"]),
        width=int(spec["width"]),
    )


def build_discriminator(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(
        "gan_discriminator",
        spec["discriminator"],
        spatial_dims=int(spec["dims"]),
        classes=int(spec["classes"]),
        width=int(spec["width"]),
        auxiliary=bool(spec.get("auxiliary", False)),
        minibatch_std=bool(spec.get("minibatch_std", False)),
    )


def condition_codes(frame: pd.DataFrame, column: str, source: Path) -> list[str]:
    """The condition of every row as text; an empty cell or too many values is a clear error."""
    values = frame[column]
    missing = [i + 1 for i, v in enumerate(values) if pd.isna(v) or not str(v).strip()]
    if missing:
        raise DataError(
            f"{source}: column '{column}' is empty in row(s) {', '.join(map(str, missing[:5]))}.",
            "Fill in the condition of every image, or remove those rows.",
        )
    text = [str(v).strip() for v in values]
    if len(set(text)) > MAX_CLASSES:
        raise DataError(
            f"{source}: column '{column}' has {len(set(text))} distinct values; a condition is a category (at most {MAX_CLASSES}).",
            "Condition on a categorical column such as diagnosis or sex.",
        )
    return text


class EpochPreviews(Callback):
    """After each epoch: ``previews/epoch-NNN.png``, samples of each condition from the same fixed noise."""

    def __init__(
        self, run: RunDirectory, module: NoiseGAN, scale: TargetScale, classes: Sequence[str]
    ) -> None:
        self.run, self.module, self.scale = run, module, scale
        self.classes = list(classes) or [""]
        noise = torch.Generator().manual_seed(12345)
        self.z = torch.randn(PREVIEW_PER_CLASS, module.latent_dim, generator=noise)

    def on_epoch_end(self, record: dict[str, float]) -> None:
        images, names = [], []
        for index, name in enumerate(self.classes):
            labels = torch.full((PREVIEW_PER_CLASS,), index, dtype=torch.long)
            batch = draw(self.module.sampler, self.z, labels if name else None)
            images += [self.scale.denormalize(x[0]).numpy() for x in batch]
            names += [name or f"sample {k + 1}" for k in range(PREVIEW_PER_CLASS)]
        epoch = int(record["epoch"])
        self.run.save_figure(
            f"previews/epoch-{epoch:03d}.png",
            contact_sheet(
                images,
                names,
                title=f"epoch {epoch}: D loss {record.get('train_d_loss', float('nan')):.3g}, G loss {record.get('train_loss', float('nan')):.3g} (fixed noise)",
                columns=PREVIEW_PER_CLASS,
            ),
        )


def draw(generator: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Images (N, 1, ...) in -1..1 from noise ``z`` (N, latent) in eval mode, 8 at a time."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(z), 8):
            chunk = None if labels is None else labels[start : start + 8].to(device)
            parts.append(generator(z[start : start + 8].to(device), chunk).float().cpu())
    generator.train(was_training)
    return torch.cat(parts)


def _check_networks(options: GenerateOptions) -> None:
    check_networks((TASK, options.model), ("gan_discriminator", options.discriminator))
    if len(options.images.image) != 1:
        raise UsageError(
            f"generate learns one image column, not {len(options.images.image)} ({', '.join(options.images.image)}).",
            "Give one --image column (train one model per contrast).",
        )


@trains(TASK, GenerateOptions, before=_check_networks)
def train(training: Training) -> dict[str, Any]:
    """Train a GAN on the images of a manifest (conditional on ``options.condition``); write the run ``out``."""
    options, manifest, run = training.options, training.manifest, training.run
    images = options.images
    groups, seed = training.groups, training.seed
    conditions: list[str] = [""] * len(manifest)
    if options.condition:
        require_columns(
            manifest.frame,
            [options.condition],
            training.manifest_path,
            fix="Name the label column to condition on with --condition (e.g. --condition diagnosis), or drop it.",
        )
        conditions = condition_codes(manifest.frame, options.condition, training.manifest_path)
    training.hold_out_test(np.unique(np.asarray(conditions), return_inverse=True)[1])
    rows, test_rows = training.rows, training.test_rows
    classes = sorted({conditions[int(r)] for r in rows}) if options.condition else []
    labels = (
        [classes.index(c) if c in classes else -1 for c in conditions] if classes else [0] * len(manifest)
    )
    items = training.items
    preprocessing = training.plan(fit_spacing=True)
    if any(s % 8 for s in preprocessing.size[: options.dims]):
        raise UsageError(
            f"the planned grid {preprocessing.size} does not suit the generator (each side a multiple of 8).",
            "Give --size, e.g. --size 32.",
        )
    # The images are both source and target of the paired pipeline: the target keeps their units.
    volumes = training.cached(
        PairedVolumes(
            items, [paths[0] for paths in items], preprocessing, resample=False, **training.cache_options()
        ),
        always=True,
    )
    grid = training_grid(preprocessing, items[int(rows[0])])
    scale = TargetScale.fit([volumes.pair(int(r))[1] for r in rows], seed)
    spec = model_spec(options, preprocessing.size, len(classes), training.run.options)
    torch.manual_seed(seed)
    module = NoiseGAN(
        build_generator(spec),
        build_discriminator(spec),
        gan_loss=options.gan_loss,
        lr=options.train.lr,
        lr_d=options.lr_d,
        latent_dim=options.latent_dim,
        aux_weight=options.aux_weight if spec["auxiliary"] else 0.0,
        # A run from before --mode-seeking existed keeps the old loss.
        mode_seeking=float(training.run.options.get("mode_seeking", 0.0)),
        # A run from before --diff-augment existed trains without it.
        diff_augment=bool(training.run.options.get("diff_augment", 0)),
        # A run from before --class-moments existed trains without it; unconditional: one class.
        class_moments=float(training.run.options.get("class_moments", 0.0)) if classes else 0.0,
        # A run from before --ema existed keeps the generator's last weights.
        average=float(training.run.options.get("ema", 0.0)),
    )
    # The output starts at the training images' mean level (mostly background), not at 0.
    level = float(torch.stack([scale.normalize(volumes.pair(int(r))[1]).mean() for r in rows]).mean())
    module.generator.start_at(level)  # type: ignore[operator]
    module.start_average()
    dataset = GanImages(
        volumes,
        rows.tolist(),
        labels,
        scale,
        dims=options.dims,
        slices=options.slices,
        depth=preprocessing.size[2],
    )
    batches = ImageBatches(
        dataset, batch_size=options.train.batch_size, shuffle=True, seed=seed, workers=images.workers
    )
    result = training.fit(
        module,
        batches,
        None,
        name="final",
        description="training the GAN",
        callbacks=[EpochPreviews(run, module, scale, classes)],
    ).result
    last = result.history[-1] if result.history else {}
    headline = {
        k: float(last[f"train_{k}"]) for k in ("loss", "d_loss", "d_real", "d_fake") if f"train_{k}" in last
    }
    evaluation = (
        "none during training (a GAN keeps its last epoch); score samples with `neurodl generate evaluate`"
    )
    if len(test_rows):
        write_held_out_manifest(run, manifest, test_rows)
        evaluation += (
            f" on the {len(set(groups[test_rows].tolist()))} held-out participants in test_manifest.tsv"
        )
    training.write(
        training.record(
            condition_column=options.condition,
            classes=classes,
            target_scale=scale.to_dict(),
            grid_affine=grid.tolist(),
            slices=options.slices,
            model=spec,
        ),
        {
            WEIGHTS_FILE: module.sampler.state_dict(),
            "discriminator.safetensors": module.discriminator.state_dict(),
        },
        SimpleNamespace(
            splits={"seed": seed, "train": sorted(set(groups[rows].tolist()))}, history=result.history
        ),
        {"evaluation": evaluation, "final_epoch": headline},
        title=f"{options.model} GAN ({options.dims}D, {options.gan_loss})",
    )
    return training.summary(
        {
            "task": TASK,
            "target": images.image[0] + (f" | {options.condition}" if options.condition else ""),
            "model": options.model,
        },
        evaluation=evaluation,
        metrics=headline,
        metrics_std={},
        epochs=result.epochs_run,
    )


@dataclass
class LoadedGenerator(trained.Trained):
    """A trained generator, ready to sample."""

    generator: torch.nn.Module
    scale: TargetScale
    condition_column: str
    classes: list[str]
    dims: int
    latent_dim: int
    grid_affine: np.ndarray

    @property
    def image_column(self) -> str:
        """The column of the images it learnt from (and of its samples' table)."""
        return self.image_columns[0]


def load(run_dir: Path, *, device: str = "auto") -> LoadedGenerator:
    """Open a generate run directory; tampered or foreign runs give a clear error."""

    def read(prep: dict[str, Any], preprocessing: ImagePreprocessing, spec: dict[str, Any]) -> dict[str, Any]:
        dims, latent = int(spec["dims"]), int(spec["latent_dim"])
        classes = [str(c) for c in prep["classes"]]
        if (
            dims not in (2, 3)
            or not 0 < latent <= 4096
            or not 0 < int(spec["width"]) <= 256
            or [int(s) for s in spec["size"]] != list(preprocessing.size)[:dims]
            or int(spec["classes"]) != len(classes)
            or len(classes) > MAX_CLASSES
            or any(not c or any(ch in c for ch in ("/", "\\", "\0")) for c in classes)
        ):
            raise ValueError("model description out of range")
        grid = np.asarray(prep["grid_affine"], dtype=float)
        if grid.shape != (4, 4) or not np.isfinite(grid).all() or abs(np.linalg.det(grid[:3, :3])) < 1e-9:
            raise ValueError("grid affine out of range")
        condition = str(prep.get("condition_column", ""))
        if bool(condition) != bool(classes):
            raise ValueError("condition column and classes disagree")
        return {
            "scale": TargetScale.from_dict(prep["target_scale"]),
            "condition_column": condition,
            "classes": classes,
            "dims": dims,
            "latent_dim": latent,
            "grid_affine": grid,
        }

    return trained.load_trained(
        run_dir, TASK, LoadedGenerator, read, build_generator, device, network="generator"
    )


def class_index(loaded: LoadedGenerator, condition: str | None) -> list[int]:
    """The class indices to sample: the one asked for, or every class (index 0 for an unconditional model)."""
    if condition is None:
        return list(range(len(loaded.classes))) or [0]
    if not loaded.classes:
        raise UsageError(
            f"--condition {condition}: this model was trained without a condition.",
            "Drop --condition, or train with --condition COLUMN.",
        )
    if condition not in loaded.classes:
        raise UsageError(
            f"--condition '{condition}' is not a condition of this model ({loaded.condition_column}: {', '.join(loaded.classes)}).",
            f"Use one of: {', '.join(loaded.classes)}.",
        )
    return [loaded.classes.index(condition)]


def generate_images(loaded: LoadedGenerator, index: int, n: int, seed: int) -> np.ndarray:
    """``n`` images of class ``index`` in the training images' units: (n, X, Y, Z) or (n, X, Y).

    The noise of class k comes from its own generator seeded by (seed, k), so the
    samples of one condition do not depend on which others are drawn.
    """
    noise = torch.Generator().manual_seed(int(seed) * 1009 + index)
    z = torch.randn(n, loaded.latent_dim, generator=noise)
    labels = torch.full((n,), index, dtype=torch.long) if loaded.classes else None
    return loaded.scale.denormalize(draw(loaded.generator, z, labels))[:, 0].numpy().astype(np.float32)


def sample(
    loaded: LoadedGenerator,
    out_dir: Path,
    *,
    n: int,
    condition: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write ``n`` samples per condition (or of ``condition`` only); see :func:`write_samples`."""
    if n < 1:
        raise UsageError(f"--n must be at least 1, not {n}.")
    if (out_dir / "samples.csv").exists() and not overwrite:
        raise OutputError(
            f"{out_dir}: already holds samples.csv.", "Choose another -o folder, or add --overwrite."
        )
    return write_samples(loaded, out_dir, dict.fromkeys(class_index(loaded, condition), n), seed)


def write_samples(
    loaded: LoadedGenerator, out_dir: Path, counts: dict[int, int], seed: int, *, sheet: bool = True
) -> pd.DataFrame:
    """Write ``counts[k]`` samples of class k as NIfTI in the training grid (its affine, the images' units).

    Also writes ``samples.csv`` (a manifest: participant_id, the condition column, the
    image column, relative paths) and ``samples.png`` (a contact sheet). 2D models write
    one-slice volumes placed at the grid's central axial slice.
    """
    affine = loaded.grid_affine
    if loaded.dims == 2:
        affine = grid_slice_affine(affine, loaded.preprocessing.size[2] // 2)
    rows: list[dict[str, Any]] = []
    shown: list[np.ndarray] = []
    names: list[str] = []
    for index, n in counts.items():
        name = loaded.classes[index] if loaded.classes else ""
        for k, image in enumerate(generate_images(loaded, index, n, seed)):
            stem = f"sample-{name}{k + 1:03d}" if name else f"sample-{k + 1:03d}"
            save_in_grid(image, out_dir / f"{stem}.nii.gz", affine)
            row: dict[str, Any] = {loaded.participant_column: stem}
            if name:
                row[loaded.condition_column] = name
            row[loaded.image_column] = f"{stem}.nii.gz"
            rows.append(row)
            if k < 6:
                shown.append(image)
                names.append(stem)
    frame = pd.DataFrame(rows)
    writer = RunDirectory(out_dir, TASK)  # atomic writes
    writer.write_csv("samples.csv", frame)
    if sheet:
        writer.save_figure(
            "samples.png",
            contact_sheet(
                shown, names, title=f"{loaded.run.path.name}: samples (seed {seed}; up to 6 per condition)"
            ),
        )
    return frame
