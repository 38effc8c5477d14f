"""Pix2pix, translate's networks and data: the generator/discriminator pair, its training patches, previews.

:func:`translate_volume` turns a preprocessed source into the synthetic target (slice by
slice, or by sliding windows); :class:`Pix2Pix` gives the engine both networks' steps;
:class:`TrainingPatches` and :class:`WholeVolumes` draw training and validation items
from the cached (source, target) pairs (:class:`~neurodl.data.volumes.PairedVolumes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from neurodl.config import TranslateOptions
from neurodl.data.volumes import PairedVolumes, Rows, epoch_seed
from neurodl.engine import Callback
from neurodl.io.nifti import Volume
from neurodl.io.rundir import RunDirectory
from neurodl.models import create_model
from neurodl.tasks._gan import AdversarialPair, TargetScale

SIZE_MULTIPLE = 16
MIN_WINDOW = 32
PATCHES_PER_VOLUME = 4  # 3D training: random patches drawn from each volume per epoch


def round_up(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
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


class TrainingPatches(torch.utils.data.Dataset):
    """Random training patches: axial slices (2D, cropped to ``patch`` if larger) or 3D patches.

    The crop of item i at epoch e is seeded by (seed, e, i), so a resumed run sees the same patches.
    """

    def __init__(
        self,
        volumes: PairedVolumes,
        rows: Rows,
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
        generator = np.random.default_rng(epoch_seed(self.seed, self.epoch, index))
        spatial = source.shape[1:]
        starts = [int(generator.integers(0, s - p + 1)) for s, p in zip(spatial, self.patch, strict=True)]
        window = (slice(None), *(slice(a, a + p) for a, p in zip(starts, self.patch, strict=True)))
        return source[window].contiguous(), target[window].contiguous()


class WholeVolumes(torch.utils.data.Dataset):
    """Whole preprocessed (source, scaled target) volumes, for validation."""

    def __init__(self, volumes: PairedVolumes, rows: Rows, scale: TargetScale) -> None:
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
        "translate",
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
        patch = [round_up(s) for s in size]
    else:
        patch = [min(32, round_up(s)) for s in size]
    return [max(MIN_WINDOW, int(p)) for p in patch][: options.dims]


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
