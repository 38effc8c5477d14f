"""What every GAN task shares: two networks with their own optimisers, adversarial losses, intensity units.

``translate`` (pix2pix: a GAN conditioned on a source image) and ``generate``
(a GAN from noise, conditioned on a label) both train a generator and a
discriminator through the engine's multi-network path (``optimizer_groups`` and
the ``step`` it passes to ``training_step``), score logits with MONAI's
``PatchAdversarialLoss``, and write images in the training images' own units
through a :class:`TargetScale` recorded in the run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neurodl.errors import DataError, UsageError

# --gan-loss name -> MONAI PatchAdversarialLoss criterion. vanilla is the lecture's minimax loss
# (binary cross-entropy; the generator maximises log D(G(z))), lsgan least squares, hinge the margin loss.
GAN_CRITERIA = {"lsgan": "least_squares", "vanilla": "bce", "hinge": "hinge"}


@dataclass(frozen=True)
class TargetScale:
    """The linear map between the images' own units and the generator's range.

    ``low``/``high`` (the training images' 0.5 and 99.5 percentiles) map to -1 and 1;
    synthetic images are clipped to ``[minimum, maximum]``, the range seen in training.
    """

    low: float
    high: float
    minimum: float
    maximum: float

    @classmethod
    def fit(cls, targets: Sequence[torch.Tensor], seed: int = 0) -> TargetScale:
        values = torch.cat([t.flatten().float() for t in targets]).numpy()
        sample = np.random.default_rng(seed).choice(values, size=min(len(values), 2_000_000), replace=False)
        low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        if not high > low:
            raise DataError(
                f"the training target images are constant (0.5-99.5 percentiles {low:g} to {high:g}): there is nothing to learn.",
                "Check the image column names the images to learn.",
            )
        return cls(low, high, float(values.min()), float(values.max()))

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.low) / (self.high - self.low) * 2 - 1

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        return ((values + 1) / 2 * (self.high - self.low) + self.low).clamp(self.minimum, self.maximum)

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "minimum": self.minimum, "maximum": self.maximum}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TargetScale:
        scale = cls(*(float(payload[k]) for k in ("low", "high", "minimum", "maximum")))
        numbers = (scale.low, scale.high, scale.minimum, scale.maximum)
        if (
            not all(math.isfinite(v) for v in numbers)
            or not scale.minimum <= scale.low < scale.high <= scale.maximum
        ):
            raise ValueError(f"target scale {payload} is not a valid range")
        return scale


class AdversarialPair:
    """A generator and a discriminator for the engine, which steps each one's optimiser.

    Subclasses write ``training_step(batch, step)``: the discriminator's loss, then
    ``step("discriminator", loss)``, then the generator's loss inside
    :meth:`frozen_discriminator` and ``step("generator", loss)``. Training calls the
    networks through ``_train_generator``/``_train_discriminator`` (their DDP wrappers
    under ``--distributed``); ``self.model`` keeps the plain networks (checkpoint layout).
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        *,
        gan_loss: str,
        lr: float,
        lr_d: float,
    ) -> None:
        from monai.losses import PatchAdversarialLoss  # heavy: only when a GAN is built

        self.model = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
        self.adversarial = PatchAdversarialLoss(
            criterion=GAN_CRITERIA[gan_loss], no_activation_leastsq=True, reduction="mean"
        )
        self.lr, self.lr_d = lr, lr_d or lr
        self._train_generator: torch.nn.Module = generator
        self._train_discriminator: torch.nn.Module = discriminator

    @property
    def generator(self) -> torch.nn.Module:
        return self.model["generator"]

    @property
    def discriminator(self) -> torch.nn.Module:
        return self.model["discriminator"]

    # Adam's moment decays for both networks (None: the engine's default, 0.9 and 0.999).
    betas: tuple[float, float] | None = None

    def optimizer_groups(self) -> dict[str, tuple[Any, ...]]:
        settings = ({"betas": self.betas},) if self.betas is not None else ()
        return {
            "discriminator": (list(self.discriminator.parameters()), self.lr_d, *settings),
            "generator": (list(self.generator.parameters()), self.lr, *settings),
        }

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Train through DDP wrappers; ``self.model`` keeps the plain networks (checkpoint layout)."""
        self._train_generator = wrap(self.generator)
        self._train_discriminator = wrap(self.discriminator)

    def _adversarial(self, logits: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
        # In float32: BCE is not safe under fp16 autocast, and the loss is cheap.
        with torch.autocast(logits.device.type, enabled=False):
            return torch.as_tensor(self.adversarial(logits.float(), real, for_discriminator))

    @contextlib.contextmanager
    def frozen_discriminator(self) -> Iterator[None]:
        """The generator's step must not touch the discriminator: no gradients flow into it."""
        for parameter in self.discriminator.parameters():
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in self.discriminator.parameters():
                parameter.requires_grad_(True)


def check_networks(generator: tuple[str, str], discriminator: tuple[str, str]) -> None:
    """Refuse an unknown ``--model`` (generator) or ``--discriminator``, each ``(registry task, name)``, before any work."""
    from neurodl.models import list_models  # imports torch: only when a GAN is trained

    for (task, name), flag in ((generator, "--model"), (discriminator, "--discriminator")):
        known = [entry.name for entry in list_models(task)]
        if name not in known:
            raise UsageError(
                f"Unknown {flag} '{name}'.", f"Known: {', '.join(known)} (see `neurodl models {task}`)."
            )
