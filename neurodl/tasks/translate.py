"""Translate: synthesise one MRI contrast (or modality) from another with a conditional GAN (pix2pix).

A generator (U-Net) maps the source image to the target image; a PatchGAN
discriminator scores (source, image) pairs patch by patch as real or synthetic.
The generator minimises ``lambda_l1 x L1 + adversarial loss``, the discriminator
its own adversarial loss; each network has its own optimiser (the engine's
``optimizer_groups``). Training uses axial slices (``dims`` 2) or 3D patches;
prediction translates whole volumes (slice by slice, or by sliding windows).

Intensities: the source is normalised per image like every image task; the
target is scaled by a mapping fitted once on the training targets (their 0.5 and
99.5 percentiles to -1 and 1) and recorded in the run, so a synthetic image is
written back in the target modality's own units (e.g. MRI intensity, CT HU),
clipped to the range seen in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurodl.config import TranslateOptions, from_dict, to_dict
from neurodl.data.images import (
    ImageBatches,
    ImagePreprocessing,
    LoadTargetd,
    invert_to_input,
    load_channels,
    plan_preprocessing,
    preprocess,
    run_pipeline,
)
from neurodl.data.inputs import resolve_inputs
from neurodl.data.splits import split_by_participant
from neurodl.engine import Callback, FitResult, fit
from neurodl.errors import DataError, ImageError, NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.manifest import load_manifest, require_columns
from neurodl.io.nifti import Volume, load_volume, save_volume
from neurodl.io.rundir import RunDirectory
from neurodl.models import create_model
from neurodl.tasks._gan import AdversarialPair, TargetScale, check_networks
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._run import (
    cache_folder,
    check_leakage,
    check_report_dir,
    held_out_test,
    progress,
    recorded_columns,
    start_run,
    warm_cache,
    write_training_record,
)
from neurodl.tasks.metrics import image_scores

TASK = "translate"
METRICS = ("mae", "psnr", "ssim")
SCORES = (*METRICS, *(f"baseline_{m}" for m in METRICS))
SIZE_MULTIPLE = 16
MIN_WINDOW = 32
PATCHES_PER_VOLUME = 4  # 3D training: random patches drawn from each volume per epoch


def _round_up(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    return int(multiple * math.ceil(value / multiple))


def translate_volume(
    generator: torch.nn.Module, source: torch.Tensor, dims: int, roi: Sequence[int]
) -> torch.Tensor:
    """The synthetic image (1, X, Y, Z), in the generator's range, of a preprocessed source (C, X, Y, Z).

    2D models translate the axial slices (16 at a time); 3D models use Gaussian-weighted
    sliding windows of ``roi`` with half overlap. Any size works (windows are padded).
    """
    from monai.inferers import sliding_window_inference

    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        if dims == 2:
            slices = source.permute(3, 0, 1, 2).to(device)  # (Z, C, X, Y)
            out = sliding_window_inference(
                slices, tuple(roi[:2]), 16, generator, overlap=0.25, mode="gaussian"
            )
            result = torch.as_tensor(out).float().permute(1, 2, 3, 0)
        else:
            out = sliding_window_inference(
                source[None].to(device), tuple(roi), 4, generator, overlap=0.5, mode="gaussian"
            )
            result = torch.as_tensor(out).float()[0]
    generator.train(was_training)
    return result.cpu()


class Pix2Pix(AdversarialPair):
    """Generator + discriminator and their losses, for the engine (which steps each optimiser).

    Training batches are ``(source, target)`` patches, the target already scaled to the
    generator's range; validation batches are whole preprocessed volumes (batch size 1).
    """

    default_monitor = "val_mae"

    def __init__(
        self,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        *,
        gan_loss: str,
        lambda_l1: float,
        lr: float,
        lr_d: float,
        scale: TargetScale,
        dims: int,
        roi: Sequence[int],
    ) -> None:
        super().__init__(generator, discriminator, gan_loss=gan_loss, lr=lr, lr_d=lr_d)
        self.lambda_l1 = lambda_l1
        self.scale = scale
        self.dims = dims
        self.roi = list(roi)

    def discriminator_loss(
        self, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        # Real and synthetic pairs in one forward pass (one DDP reduction; instance norm keeps samples apart).
        pairs = torch.cat([torch.cat([source, target], dim=1), torch.cat([source, fake.detach()], dim=1)])
        real_logits, fake_logits = self._train_discriminator(pairs).chunk(2)
        return 0.5 * (
            self._adversarial(real_logits, True, True) + self._adversarial(fake_logits, False, True)
        )

    def generator_losses(
        self, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The plain discriminator (not its DDP wrapper): its weights are frozen for this step.
        adversarial = self._adversarial(self.discriminator(torch.cat([source, fake], dim=1)), True, False)
        return adversarial, (fake.float() - target.float()).abs().mean()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], step: Callable[[str, torch.Tensor], None]
    ) -> dict[str, torch.Tensor]:
        source, target = batch
        fake = self._train_generator(source)
        d_loss = self.discriminator_loss(source, target, fake)
        step("discriminator", d_loss)
        with self.frozen_discriminator():
            adversarial, l1 = self.generator_losses(source, target, fake)
            g_loss = adversarial + self.lambda_l1 * l1
            step("generator", g_loss)
        # "loss" is the L1 error, like the validation loss, so the two curves compare; the
        # generator's whole objective and the adversarial terms are recorded beside it.
        return {
            "loss": l1.detach(),
            "g_total": g_loss.detach(),
            "g_adversarial": adversarial.detach(),
            "d_loss": d_loss.detach(),
        }

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        source, target = batch
        maes, psnrs, l1s = [], [], []
        for k in range(source.shape[0]):
            fake = translate_volume(self.generator, source[k], self.dims, self.roi)
            real = target[k].float().cpu()
            l1s.append((fake - real).abs().mean())
            fake_units, real_units = self.scale.denormalize(fake), self.scale.denormalize(real)
            mse = ((fake_units - real_units) ** 2).mean()
            data_range = max(float(real_units.max() - real_units.min()), 1e-6)
            maes.append((fake_units - real_units).abs().mean())
            psnrs.append(10 * torch.log10(data_range**2 / mse.clamp_min(1e-12)))
        return {"l1": torch.stack(l1s), "mae": torch.stack(maes), "psnr": torch.stack(psnrs)}

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            "loss": float(outputs["l1"].mean()),
            "mae": float(outputs["mae"].mean()),
            "psnr": float(outputs["psnr"].mean()),
        }


class PairedVolumes:
    """Preprocessed (source, target) pairs of a manifest; target in its own units.

    ``cache``: ``auto`` (RAM within ``cache_budget``, ``cache_dir`` beyond), ``memory`` (RAM),
    ``disk`` (safetensors files in ``cache_dir``, reused by later runs) or ``none``.
    """

    def __init__(
        self,
        items: Sequence[Sequence[Path]],
        targets: Sequence[Path],
        preprocessing: ImagePreprocessing,
        *,
        resample: bool,
        cache: str,
        cache_dir: Path | None = None,
        cache_budget: int | str = "",
        describe: Callable[[int], str],
    ) -> None:
        from neurodl.data.images import volume_store

        self.items = [list(i) for i in items]
        self.targets = list(targets)
        self.preprocessing = preprocessing
        self.resample = resample
        self.store = volume_store(
            cache, cache_dir, {**preprocessing.to_dict(), "resample_target": resample}, cache_budget
        )
        self.describe = describe

    def __len__(self) -> int:
        return len(self.items)

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        files = [*self.items[index], self.targets[index]]
        stored = self.store.load(index, files, kind="image+target")
        if stored is not None:
            return stored["image"], stored["target"]
        data = {"image": [str(p) for p in self.items[index]], "target": str(self.targets[index])}
        out = run_pipeline(
            self.preprocessing.transforms_with_target(resample=self.resample), data, self.describe(index)
        )
        pair = (out["image"].as_tensor().float().contiguous(), out["target"].as_tensor().float().contiguous())
        self.store.save(index, files, {"image": pair[0], "target": pair[1]}, kind="image+target")
        return pair

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        for index in range(len(self)):
            self.pair(index)
            if progress is not None:
                progress(index)


class TrainingPatches(torch.utils.data.Dataset):
    """Random training patches: axial slices (2D, cropped to ``patch`` if larger) or 3D patches.

    The crop of item i at epoch e is seeded by (seed, e, i), so a resumed run sees the same patches.
    """

    def __init__(
        self,
        volumes: PairedVolumes,
        rows: Sequence[int],
        scale: TargetScale,
        *,
        dims: int,
        patch: Sequence[int],
        slices: int,
        seed: int,
    ) -> None:
        self.volumes = volumes
        self.scale = scale
        self.dims = dims
        self.patch = list(patch)
        self.seed = seed
        self.epoch = 0
        self.items: list[tuple[int, int]] = []
        for row in rows:
            if dims == 3:
                self.items += [(int(row), k) for k in range(PATCHES_PER_VOLUME)]
                continue
            source, _ = volumes.pair(int(row))
            depth = source.shape[-1]
            # Slices holding head (any non-zero source voxel); then the central `slices` of them.
            holding = [z for z in range(depth) if bool(source[..., z].abs().amax() > 0)] or list(range(depth))
            if slices and len(holding) > slices:
                start = (len(holding) - slices) // 2
                holding = holding[start : start + slices]
            self.items += [(int(row), z) for z in holding]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row, k = self.items[index]
        source, target = self.volumes.pair(row)
        target = self.scale.normalize(target)
        if self.dims == 2:
            source, target = source[..., k], target[..., k]
        generator = np.random.default_rng((self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**31))
        spatial = source.shape[1:]
        starts = [int(generator.integers(0, s - p + 1)) for s, p in zip(spatial, self.patch, strict=True)]
        window = (slice(None), *(slice(a, a + p) for a, p in zip(starts, self.patch, strict=True)))
        return source[window].contiguous(), target[window].contiguous()


class WholeVolumes(torch.utils.data.Dataset):
    """Whole preprocessed (source, scaled target) volumes, for validation."""

    def __init__(self, volumes: PairedVolumes, rows: Sequence[int], scale: TargetScale) -> None:
        self.volumes = volumes
        self.rows = [int(r) for r in rows]
        self.scale = scale

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = self.volumes.pair(self.rows[index])
        return source, self.scale.normalize(target)


def generator_spec(options: TranslateOptions, channels: int) -> dict[str, Any]:
    return {
        "name": options.model,
        "discriminator": options.discriminator,
        "dims": options.dims,
        "in_channels": channels,
        "width": options.width,
    }


def build_generator(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(
        TASK,
        spec["name"],
        spatial_dims=int(spec["dims"]),
        in_channels=int(spec["in_channels"]),
        out_channels=1,
        width=int(spec["width"]),
    )


def build_discriminator(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(
        "discriminator",
        spec["discriminator"],
        spatial_dims=int(spec["dims"]),
        in_channels=int(spec["in_channels"]) + 1,
        width=int(spec["width"]),
    )


def plan_roi(options: TranslateOptions, size: Sequence[int]) -> list[int]:
    """The training patch (and inference window): the whole slice in 2D, ``--patch`` (or 32) in 3D.

    At least ``MIN_WINDOW`` per side: the U-Net halves it four times and its deepest level
    needs more than one voxel. Smaller images are padded up to it.
    """
    if options.patch:
        patch = [options.patch[0]] * 3 if len(options.patch) == 1 else list(options.patch)
    elif options.dims == 2:
        patch = [_round_up(s) for s in size]
    else:
        patch = [min(32, _round_up(s)) for s in size]
    return [max(MIN_WINDOW, int(p)) for p in patch][: options.dims]


@dataclass
class Fitted:
    module: Pix2Pix
    result: FitResult


class EpochPreviews(Callback):
    """After each epoch: ``previews/epoch-NNN.png``, source / synthetic / real of one validation image."""

    def __init__(
        self,
        run: RunDirectory,
        module: Pix2Pix,
        pair: tuple[torch.Tensor, torch.Tensor],
        spacing: Sequence[float],
    ) -> None:
        self.run = run
        self.module = module
        self.source, self.target = pair
        self.spacing = [float(s) for s in spacing]

    def on_epoch_end(self, record: dict[str, float]) -> None:
        import nibabel as nib

        from neurodl.report.slices import comparison_slices

        fake = self.module.scale.denormalize(
            translate_volume(self.module.generator, self.source, self.module.dims, self.module.roi)
        )
        # Preprocessed volumes are RAS at the run's spacing.
        grid = Volume(
            data=self.target[0].numpy(),
            affine=np.diag([*self.spacing, 1.0]),
            header=nib.Nifti1Header(),
        )
        epoch = int(record["epoch"])
        self.run.save_figure(
            f"previews/epoch-{epoch:03d}.png",
            comparison_slices(
                grid,
                [
                    ("source", self.source[0].numpy(), "gray"),
                    ("real", self.target[0].numpy(), "gray"),
                    ("synthetic", fake[0].numpy(), "gray"),
                ],
                title=f"epoch {epoch}: validation MAE {record.get('val_mae', float('nan')):.4g} (same window for real and synthetic)",
                same_scale=(1, 2),
            ),
        )


def _target_paths(manifest: Any, manifest_path: Path, column: str, rows: Sequence[int]) -> list[Path]:
    """The target image of each row (absolute), refusing empty cells and non-image columns."""
    paths = []
    for row in rows:
        value = manifest.frame[column].iloc[int(row)]
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"{manifest_path}: row {int(row) + 1} has no target image in column '{column}'.",
                "Fill in the path, or remove the row.",
            )
        if not value.lower().endswith((".nii", ".nii.gz")):
            raise DataError(
                f"{manifest_path}: column '{column}' holds '{value}' (row {int(row) + 1}), not a NIfTI path.",
                "Name the column of target images (.nii/.nii.gz) with --target.",
            )
        path = Path(value) if Path(value).is_absolute() else manifest.root / value
        if not path.exists():
            raise DataError(
                f"{path}: file does not exist ({manifest_path} row {int(row) + 1}).", "Check the path."
            )
        paths.append(path)
    return paths


def train(
    manifest_path: Path | None,
    options: TranslateOptions,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train a pix2pix model from source to target images of a manifest; write the run directory ``out``."""
    check_networks((TASK, options.model), ("discriminator", options.discriminator))
    run, manifest_path, saved = start_run(
        out, task=TASK, source=manifest_path, options=to_dict(options), resume=resume, overwrite=overwrite
    )
    options = from_dict(TranslateOptions, saved)
    images = options.images
    if options.target in images.image:
        raise UsageError(
            f"--target '{options.target}' is also a --source column: the model would learn to copy its input.",
            "Name different source and target columns.",
        )
    manifest = load_manifest(
        manifest_path,
        list(images.image),
        None,
        images.participant,
        bids_filter=images.bids_filter,
        bids_images=[options.target],
    )
    require_columns(
        manifest.frame,
        [options.target],
        manifest_path,
        fix="Name the column of the images to synthesise with --target (e.g. --target t2).",
    )
    groups = np.asarray(manifest.participant_ids, dtype=str)
    seed = options.train.seed
    rows = np.arange(len(manifest))
    test_rows = np.zeros(0, dtype=int)
    strata = np.zeros(len(manifest), dtype=int)
    if options.test_fraction > 0:
        kept, held = split_by_participant(groups, strata, options.test_fraction, seed + 101)
        rows, test_rows = rows[kept], rows[held]
    items = [manifest.image_paths(int(r)) for r in range(len(manifest))]
    targets = _target_paths(manifest, manifest_path, options.target, range(len(manifest)))
    channels = len(images.image)
    planned = plan_preprocessing(
        [items[int(r)][0] for r in rows],
        spacing=images.spacing,
        size=images.size,
        normalize=images.normalize,
        crop_foreground=images.crop_foreground,
        channels=channels,
        resize=False,
    )
    roi = plan_roi(options, [_round_up(s) for s in planned.size])
    # Whole volumes, padded up to the window: nothing is cropped away, any head size works.
    padded = [
        max(_round_up(s), r) for s, r in zip(planned.size, [*roi, *planned.size[len(roi) :]], strict=True)
    ]
    preprocessing = ImagePreprocessing(
        spacing=planned.spacing,
        size=(padded[0], padded[1], padded[2]),
        normalize=planned.normalize,
        crop_foreground=planned.crop_foreground,
        channels=channels,
        resize=False,
    )
    volumes = PairedVolumes(
        items,
        targets,
        preprocessing,
        resample=options.resample_target,
        cache=images.cache,
        cache_dir=cache_folder(run, images),
        cache_budget=images.cache_budget,
        describe=lambda i: f"{manifest_path.name} row {i + 1}",
    )
    warm_cache(volumes, console, quiet)
    spec = generator_spec(options, channels)

    def fit_fn(
        train_rows: np.ndarray, val_rows: np.ndarray | None, name: str, description: str, epochs: int | None
    ) -> Fitted:
        del epochs  # no cross-validation for GANs: one split, selected on validation MAE
        scale = TargetScale.fit([volumes.pair(int(r))[1] for r in train_rows], seed)
        torch.manual_seed(seed)
        module = Pix2Pix(
            build_generator(spec),
            build_discriminator(spec),
            gan_loss=options.gan_loss,
            lambda_l1=options.lambda_l1,
            lr=options.train.lr,
            lr_d=options.lr_d,
            scale=scale,
            dims=options.dims,
            roi=roi,
        )
        patches = TrainingPatches(
            volumes, train_rows, scale, dims=options.dims, patch=roi, slices=options.slices, seed=seed
        )
        val = None
        previews: list[Callback] = []
        if val_rows is not None and len(val_rows):
            val = ImageBatches(WholeVolumes(volumes, val_rows, scale), batch_size=1, shuffle=False)  # type: ignore[arg-type]
            previews = [EpochPreviews(run, module, volumes.pair(int(val_rows[0])), preprocessing.spacing)]
        with progress(console, quiet, description) as callbacks:
            result = fit(
                module,
                ImageBatches(
                    patches,
                    batch_size=options.train.batch_size,
                    shuffle=True,
                    seed=seed,
                    workers=images.workers,
                ),  # type: ignore[arg-type]
                val,
                options.train,
                checkpoint=run.file(f"checkpoints/{name}.safetensors"),
                resume=resume,
                callbacks=[*callbacks, *previews],
                resume_hint=f"Continue with: neurodl translate train --resume --out {run.path}",
            )
        return Fitted(module, result)

    def predict_rows(fitted: Fitted, subset_rows: np.ndarray) -> np.ndarray:
        scores = []
        for r in subset_rows:
            synthetic, _, _ = synthesize(
                fitted.module.generator, preprocessing, fitted.module.scale, options.dims, roi, items[int(r)]
            )
            real, source = real_target(items[int(r)], targets[int(r)], options.resample_target)
            scores.append(score_pair(synthetic, real, source))
        return np.asarray([[s[k] for k in SCORES] for s in scores], dtype=float).reshape(
            len(subset_rows), len(SCORES)
        )

    def score_rows(subset_rows: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        del subset_rows
        return {name: float(np.mean(scores[:, k])) for k, name in enumerate(SCORES)}

    outcome = run_protocol(
        groups,
        strata,
        rows,
        cv=0,
        val_fraction=options.val_fraction,
        seed=seed,
        fit=fit_fn,
        predict=predict_rows,
        score=score_rows,
        unit="images",
    )
    final: Fitted = outcome.final
    metrics = dict(outcome.metrics)
    headline = dict(outcome.headline)
    evaluation = outcome.evaluation
    if len(test_rows):
        metrics["test"], evaluation = held_out_test(
            run,
            manifest,
            groups,
            test_rows,
            score_rows(test_rows, predict_rows(final, test_rows)),
            evaluation,
        )
        headline = {k: v for k, v in metrics["test"].items() if k in SCORES}

    from neurodl.report import plots as figures

    run.write_json(
        "preprocessing.json",
        {
            "images": preprocessing.to_dict(),
            "image_columns": list(images.image),
            "target_column": options.target,
            "participant_column": images.participant,
            "resample_target": options.resample_target,
            "target_scale": final.module.scale.to_dict(),
            "model": spec,
            "window": roi,
        },
    )
    run.save_weights(final.module.generator.state_dict())
    run.save_weights(final.module.discriminator.state_dict(), "discriminator.safetensors")
    write_training_record(
        run,
        outcome,
        metrics,
        participant_column=images.participant,
        groups=groups,
        rows=rows,
        test_rows=test_rows,
    )
    run.save_figure(
        "learning_curves.png",
        figures.learning_curves(
            outcome.history,
            title=f"pix2pix {options.model} ({options.dims}D): {','.join(images.image)} -> {options.target}",
        ),
    )
    return {
        "task": "translate",
        "target": f"{','.join(images.image)} -> {options.target}",
        "model": options.model,
        "images": len(manifest),
        "participants": len(set(groups.tolist())),
        "preprocessing": preprocessing.to_dict(),
        "evaluation": evaluation,
        "metrics": headline,
        "metrics_std": {},
        "epochs": final.result.epochs_run,
        "run": str(run.path),
    }


def synthesize(
    generator: torch.nn.Module,
    preprocessing: ImagePreprocessing,
    scale: TargetScale,
    dims: int,
    roi: Sequence[int],
    paths: Sequence[Path],
    where: str = "",
) -> tuple[np.ndarray, Any, Volume]:
    """The synthetic target of one source image, in the source's own grid and the target's units.

    Returns the (I, J, K) array, the preprocessed source and the source volume as loaded.
    """
    x = preprocess(preprocessing, paths, where=where)
    fake = scale.denormalize(translate_volume(generator, x.as_tensor(), dims, roi))
    in_input = invert_to_input(fake, x, preprocessing)[0]
    original = load_volume(paths[0])
    if in_input.shape != original.shape:
        raise ImageError(
            paths[0],
            f"internal geometry check failed: synthetic image {in_input.shape} vs input {original.shape}.",
            "Report this with the file's `neurodl info` output.",
        )
    return in_input.astype(np.float32), x, original


def real_target(paths: Sequence[Path], target: Path, resample: bool) -> tuple[np.ndarray, np.ndarray]:
    """The real target on the source's grid (resampled onto it with ``resample``), and the source's first channel."""
    source = load_channels(paths)
    loaded = LoadTargetd("target", resample)({"image": source, "target": str(target)})["target"]
    return np.asarray(loaded[0].numpy(), dtype=np.float32), np.asarray(source[0].numpy(), dtype=np.float32)


def rescaled_source(source: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The trivial baseline: the source linearly rescaled so its 1-99 % range matches the target's."""
    s_low, s_high = np.percentile(source, [1, 99])
    t_low, t_high = np.percentile(real, [1, 99])
    return ((source - s_low) / max(s_high - s_low, 1e-6) * (t_high - t_low) + t_low).astype(np.float32)


def score_pair(
    synthetic: np.ndarray, real: np.ndarray, source: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, PSNR, SSIM of the synthetic image and of the rescaled-source baseline, against the real target."""
    m = None if mask is None else torch.from_numpy(mask[None].astype(np.float32))
    real_t = torch.from_numpy(real[None])
    ours = image_scores(real_t, torch.from_numpy(synthetic[None]), m)
    baseline = image_scores(real_t, torch.from_numpy(rescaled_source(source, real)[None]), m)
    return {**{k: ours[k] for k in METRICS}, **{f"baseline_{k}": baseline[k] for k in METRICS}}


@dataclass
class LoadedTranslator:
    """A trained translation model, ready for new images."""

    run: RunDirectory
    generator: torch.nn.Module
    preprocessing: ImagePreprocessing
    scale: TargetScale
    image_columns: list[str]
    target_column: str
    participant_column: str
    resample_target: bool
    dims: int
    window: list[int]
    device: torch.device


def load(run_dir: Path, *, device: str = "auto") -> LoadedTranslator:
    """Open a translate run directory; tampered or foreign runs give a clear error."""
    from neurodl.engine import resolve_device

    run = RunDirectory.open(run_dir, task=TASK)
    prep = run.read_json("preprocessing.json")
    try:
        preprocessing = ImagePreprocessing.from_dict(prep["images"])
        spec = dict(prep["model"])
        dims = int(spec["dims"])
        window = [int(w) for w in prep["window"]]
        if (
            dims not in (2, 3)
            or len(window) != dims
            or any(w < MIN_WINDOW or w % SIZE_MULTIPLE or w > 1024 for w in window)
            or any(w > s for w, s in zip(window, preprocessing.size, strict=False))  # training never does
            or not 0 < int(spec["in_channels"]) <= 64
            or not 0 < int(spec["width"]) <= 512
        ):
            raise ValueError("model description out of range")
        scale = TargetScale.from_dict(prep["target_scale"])
        columns, participant_column = recorded_columns(prep, int(spec["in_channels"]))
        target_column = prep["target_column"]
        # The target column names every output file (<image>_to-<target>): no path separators.
        if (
            not isinstance(target_column, str)
            or not target_column
            or any(c in target_column for c in ("/", "\\", "\0"))
        ):
            raise ValueError("target column out of range")
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged or names an unknown model ({exc}).",
            "Train the model again.",
        ) from exc
    generator = run.load_model(lambda: build_generator(spec))
    target = resolve_device(device)
    generator.to(target).eval()
    return LoadedTranslator(
        run,
        generator,
        preprocessing,
        scale,
        list(columns),
        target_column,
        participant_column,
        bool(prep.get("resample_target", False)),
        dims,
        window,
        target,
    )


@dataclass
class Failure:
    name: str
    message: str


def predict(
    loaded: LoadedTranslator,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    overwrite: bool = False,
    preview: bool = False,
    shard: str | None = None,
    on_image: Any = None,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``<name>_to-<target>.nii.gz`` per input: the synthetic image, in the input's grid and affine.

    Intensities are in the target modality's units. With ``preview`` a PNG shows the
    source, the synthetic image and (for manifest rows that have it) the real target.
    Outputs already present are kept unless ``overwrite``; a bad input is reported
    and the others still processed.
    """
    images, manifest = resolve_inputs(
        inputs, image_columns=loaded.image_columns, participant_column=loaded.participant_column, shard=shard
    )
    input_files = {p.resolve() for image in images for p in image.paths}
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    writer = RunDirectory(out_dir, TASK)  # atomic writer for PNG previews
    suffix = f"_to-{loaded.target_column}"
    for image in images:
        path = out_dir / f"{image.name}{suffix}.nii.gz"
        try:
            if path.resolve() in input_files:
                raise OutputError(
                    f"{path}: is also an input; neurodl never overwrites its inputs.",
                    "Choose another -o folder.",
                )
            row: dict[str, Any] = {
                "participant_id": image.participant or image.name,
                "image": str(image.paths[0]),
                "synthetic": str(path),
            }
            if path.exists() and not overwrite:
                row["status"] = "kept"
                rows.append(row)
                continue
            synthetic, _, original = synthesize(
                loaded.generator,
                loaded.preprocessing,
                loaded.scale,
                loaded.dims,
                loaded.window,
                image.paths,
                image.where,
            )
            save_volume(synthetic, path, like=original)
            if preview:
                from neurodl.report.slices import comparison_slices

                panels = [("source", original.data, "gray"), ("synthetic", synthetic, "gray")]
                real_path = _manifest_target(manifest, image.row, loaded.target_column)
                if real_path is not None:
                    real, _ = real_target(image.paths, real_path, loaded.resample_target)
                    panels.append(("real", real, "gray"))
                writer.save_figure(
                    f"{image.name}{suffix}.png",
                    comparison_slices(
                        original,
                        panels,
                        title=f"{image.name}: source, synthetic {loaded.target_column}"
                        + (" and real (same grey scale)" if real_path is not None else ""),
                        same_scale=(2, 1) if real_path is not None else (),
                    ),
                )
            row["status"] = "written"
            rows.append(row)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    return pd.DataFrame(rows), failures


def _manifest_target(manifest: Any, row: int | None, column: str) -> Path | None:
    if manifest is None or row is None or column not in manifest.frame.columns:
        return None
    value = manifest.frame[column].iloc[row]
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value) if Path(value).is_absolute() else manifest.root / value
    return path if path.exists() else None


def evaluate(
    loaded: LoadedTranslator,
    manifest_path: Path,
    *,
    mask_column: str | None = None,
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
    on_image: Any = None,
    bids_filter: Sequence[str] = (),
) -> tuple[dict[str, Any], pd.DataFrame, list[Failure], list[str]]:
    """MAE, PSNR and SSIM per image of the synthetic vs the real target, in the source's grid and the target's units.

    Also scores the trivial baseline (the source rescaled to the target's range) the same way.
    """
    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    manifest = load_manifest(
        manifest_path,
        loaded.image_columns,
        mask_column,
        loaded.participant_column,
        require_files=False,
        bids_images=[loaded.target_column],
        bids_filter=bids_filter,
    )
    require_columns(
        manifest.frame,
        [loaded.target_column],
        manifest_path,
        fix=f"The model synthesises '{loaded.target_column}' images: give a manifest with that column of real targets.",
    )
    if mask_column:
        require_columns(manifest.frame, [mask_column], manifest_path)
        if not manifest.label_is_image or manifest.label_files is None:
            raise UsageError(
                f"{manifest_path}: column '{mask_column}' does not hold mask images (.nii/.nii.gz paths).",
                "Name a column of label images with --mask (e.g. --mask dseg).",
            )
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    images, _ = resolve_inputs(
        [manifest_path],
        image_columns=loaded.image_columns,
        participant_column=loaded.participant_column,
        bids_filter=bids_filter,
    )
    rows, failures = [], []
    for image in images:
        try:
            assert image.row is not None
            target_path = _target_paths(manifest, manifest_path, loaded.target_column, [image.row])[0]
            synthetic, _, original = synthesize(
                loaded.generator,
                loaded.preprocessing,
                loaded.scale,
                loaded.dims,
                loaded.window,
                image.paths,
                image.where,
            )
            real, source = real_target(image.paths, target_path, loaded.resample_target)
            mask = None
            if mask_column and manifest.label_files is not None:
                mask_path = manifest.label_files[image.row]
                if mask_path is None:
                    raise DataError(
                        f"{manifest_path}: row {image.row + 1} has no mask in column '{mask_column}'.",
                        "Fill in the mask path.",
                    )
                mask_volume = load_volume(Path(mask_path), dtype=None)
                if mask_volume.shape != original.shape or not np.allclose(
                    mask_volume.affine, original.affine, atol=1e-3
                ):
                    raise ImageError(
                        Path(mask_path),
                        f"has shape {mask_volume.shape} and orientation {mask_volume.orientation}, but its image has {original.shape} and {original.orientation}; a mask must share its image's grid.",
                        "Resample the mask onto the image with nearest-neighbour interpolation first.",
                    )
                mask = np.asarray(mask_volume.data) > 0
            row: dict[str, Any] = {
                "participant_id": image.participant,
                "image": str(image.paths[0]),
                "target": str(target_path),
            }
            row.update(score_pair(synthetic, real, source, mask))
            rows.append(row)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    if not rows:
        reasons = "; ".join(f"{f.name}: {f.message}" for f in failures[:3])
        raise DataError(
            f"{manifest_path}: no image could be evaluated ({reasons}).", "Fix the inputs named above."
        )
    per_image = pd.DataFrame(rows)
    metrics: dict[str, Any] = {
        "images": len(per_image),
        "mask": mask_column or "",
        "units": loaded.target_column,
    }
    metrics.update({name: float(per_image[name].mean()) for name in SCORES})
    if report_dir is not None and not failures:  # a report that leaves inputs out would mislead
        writer = RunDirectory(report_dir, TASK)
        writer.write_csv("per_image.csv", per_image)
        writer.write_json(
            "metrics.json", {"manifest": str(manifest_path), "model": str(loaded.run.path), **metrics}
        )
    return metrics, per_image, failures, warnings
