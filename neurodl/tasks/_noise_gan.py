"""The GAN that ``generate`` trains: a generator from noise and a projection discriminator, with the
terms that make its samples diverse and of the asked condition on a few dozen images (AC-GAN head,
mode seeking, differentiable augmentation, class moments) and a moving average of the generator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from neurodl.tasks._gan import AdversarialPair


class NoiseGAN(AdversarialPair):
    """Generator from noise + projection discriminator, for the engine (which steps each optimiser).

    Batches are ``(images, class indices)``, images already scaled to -1..1. With
    ``aux_weight`` > 0 (AC-GAN; the discriminator needs its auxiliary classifier head)
    the discriminator also learns to name the condition of real images (cross-entropy,
    times ``aux_weight``) and the generator is rewarded when it names the asked
    condition in its samples: the projection alone let the samples of one condition
    look like the other's. With ``mode_seeking`` > 0 the generator also draws a second
    image of each asked condition from other noise and is penalised (times
    ``mode_seeking``) by the inverse of their distance per unit of noise distance,
    against samples that ignore the noise (mode collapse). With ``diff_augment`` the
    discriminator sees every image, real or synthetic, in both of its steps, randomly
    flipped left-right and shifted (differentiable augmentation, Zhao et al. 2020):
    on a few dozen images its condition head otherwise memorised them, and the
    generator learnt to satisfy it with features no other classifier shares.
    With ``class_moments`` > 0 the generator is also penalised (times ``class_moments``)
    by the squared distance, on a grid coarsened 4 times per side, between the mean of
    its samples of each condition and the mean of the batch's real images of that
    condition: a signal of what tells the conditions apart that a few dozen images
    cannot be memorised into.
    With ``average`` > 0 (after :meth:`start_average`) the images are sampled from an
    exponential moving average of the generator's weights (decay ``average`` per step,
    Karras et al. 2018), its :attr:`sampler`: the last weights of a GAN trained on a few
    dozen images swing from step to step, and with them whether the samples show the
    asked condition (sample data, conditional: CN samples a classifier recognised went
    from 20/20 to 0/20 with the seed; with the average, 20/20 in the same seeds).
    """

    default_monitor = "train_loss"
    # DCGAN's Adam (beta1 0.5): on two classes of discs the default 0.9 learnt the sizes per class
    # in 1 of 3 seeds after 600 steps, 0.5 in 2 of 3 after 200.
    betas = (0.5, 0.999)

    def __init__(
        self,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        *,
        latent_dim: int,
        aux_weight: float = 0.0,
        mode_seeking: float = 0.0,
        diff_augment: bool = False,
        class_moments: float = 0.0,
        average: float = 0.0,
        **losses: Any,
    ) -> None:
        """``losses``: the GAN loss and learning rates of :class:`~neurodl.tasks._gan.AdversarialPair`."""
        super().__init__(generator, discriminator, **losses)
        self.latent_dim = latent_dim
        self.aux_weight = aux_weight
        self.mode_seeking = mode_seeking
        self.diff_augment = diff_augment
        self.class_moments = class_moments
        self.average = average

    def start_average(self) -> None:
        """With ``average`` > 0: keep an exponential moving average of the generator's weights (its
        ``sampler``), from its weights now; part of the checkpoint, so a resumed run continues it."""
        if self.average > 0:
            self.model["average"] = copy.deepcopy(self.generator).requires_grad_(False)

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator that samples: the moving average of its weights where kept, else itself."""
        if "average" in self.model:  # a ModuleDict: no .get()
            return self.model["average"]
        return self.generator

    @torch.no_grad()
    def _update_average(self) -> None:
        if "average" in self.model:
            for kept, current in zip(self.sampler.parameters(), self.generator.parameters(), strict=True):
                kept.lerp_(current.detach(), 1.0 - self.average)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], step: Callable[[str, torch.Tensor], None]
    ) -> dict[str, torch.Tensor]:
        real, labels = batch
        auxiliary = self.aux_weight > 0
        # Drawn from the global generator, which the engine seeds per epoch: a resumed run draws the same noise.
        z = torch.randn(real.shape[0], self.latent_dim, device=real.device)
        if self.mode_seeking > 0:
            # Mode seeking (Mao et al. 2019): a second image of each asked condition from other noise.
            z2 = torch.randn(real.shape[0], self.latent_dim, device=real.device)
            fake, fake2 = self._train_generator(torch.cat([z, z2]), torch.cat([labels, labels])).chunk(2)
        else:
            fake = self._train_generator(z, labels)
        # Real and synthetic images in one forward pass (one DDP reduction; instance norm keeps samples
        # apart; the two halves are separate groups for a minibatch-std channel).
        extra: dict[str, Any] = {"groups": 2} if getattr(self.discriminator, "minibatch_std", False) else {}
        if auxiliary:
            extra["return_classes"] = True
        out = self._train_discriminator(
            self._augment(torch.cat([real, fake.detach()])), torch.cat([labels, labels]), **extra
        )
        logits, class_logits = out if auxiliary else (out, None)
        real_logits, fake_logits = logits.chunk(2)
        d_loss = 0.5 * (
            self._adversarial(real_logits, True, True) + self._adversarial(fake_logits, False, True)
        )
        metrics: dict[str, torch.Tensor] = {}
        if class_logits is not None:
            # AC-GAN: the discriminator learns the condition from real images only.
            real_classes = class_logits.chunk(2)[0]
            d_aux = self._cross_entropy(real_classes, labels)
            d_loss = d_loss + self.aux_weight * d_aux
            metrics["d_aux"] = d_aux.detach()
            metrics["d_class_real"] = (real_classes.detach().argmax(1) == labels).float().mean()
        step("discriminator", d_loss)
        with self.frozen_discriminator():
            # The plain discriminator (not its DDP wrapper): its weights are frozen for this step.
            if auxiliary:
                judged, fake_classes = self.discriminator(self._augment(fake), labels, return_classes=True)
                g_adversarial = self._adversarial(judged, True, False)
                g_aux = self._cross_entropy(fake_classes, labels)
                g_loss = g_adversarial + self.aux_weight * g_aux
                metrics["g_aux"] = g_aux.detach()
                # The share of samples whose asked condition the discriminator (after its step) names.
                metrics["d_class_fake"] = (fake_classes.detach().argmax(1) == labels).float().mean()
            else:
                g_adversarial = g_loss = self._adversarial(
                    self.discriminator(self._augment(fake), labels), True, False
                )
            if self.mode_seeking > 0:
                # Two noise vectors, one condition: the generator is penalised when their images are alike
                # (the inverse of the images' mean distance per unit of noise distance).
                spread = (fake - fake2).abs().mean() / (z - z2).abs().mean()
                g_loss = g_loss + self.mode_seeking / (spread + 1e-5)
                metrics["g_spread"] = spread.detach()
            if self.class_moments > 0:
                moments = class_mean_distance(fake, real, labels)
                g_loss = g_loss + self.class_moments * moments
                metrics["g_moments"] = moments.detach()
            step("generator", g_loss)
        self._update_average()
        # "loss" is the generator's adversarial loss; d_real/d_fake: the share of real and
        # synthetic images the discriminator (before its step) judged correctly.
        return {
            "loss": g_adversarial.detach(),
            "d_loss": d_loss.detach(),
            "d_real": (real_logits.detach() > 0).float().mean(),
            "d_fake": (fake_logits.detach() < 0).float().mean(),
            **metrics,
        }

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """With ``diff_augment``: each image flipped left-right (p 0.5) and shifted by up to 1/8 of each side."""
        return diff_augment(images) if self.diff_augment else images

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            return torch.nn.functional.cross_entropy(logits.float(), labels)


def class_mean_distance(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the classes in ``labels`` of the squared distance between the mean synthetic and the
    mean real image of that class (each image ``labels[i]``), on a grid coarsened 4 times per side."""
    pool = torch.nn.functional.avg_pool3d if fake.dim() == 5 else torch.nn.functional.avg_pool2d
    fake, real = pool(fake.float(), 4, ceil_mode=True), pool(real.float(), 4, ceil_mode=True)
    distances = [
        (fake[labels == c].mean(0) - real[labels == c].mean(0)).pow(2).mean() for c in labels.unique()
    ]
    return torch.stack(distances).mean()


def diff_augment(images: torch.Tensor) -> torch.Tensor:
    """Differentiable augmentation of a batch (N, C, *spatial): per image a left-right flip (first
    spatial axis, p 0.5) and a circular shift of up to 1/8 of each side (the borders are background).

    Drawn from the global generator, which the engine seeds per epoch.
    """
    sides = images.shape[2:]
    flips = torch.rand(images.shape[0]) < 0.5
    shifts = [torch.randint(-(s // 8), s // 8 + 1, (images.shape[0],)) for s in sides]
    out = []
    for i, image in enumerate(images):
        if flips[i]:
            image = image.flip(1)
        out.append(image.roll([int(t[i]) for t in shifts], dims=list(range(1, len(sides) + 1))))
    return torch.stack(out)
