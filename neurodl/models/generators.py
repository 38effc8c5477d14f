"""GANs from noise: generators (task ``generate``) and their discriminators (task ``gan_discriminator``).

A generator maps a noise vector (and, for a conditional model, a class index) to an
image of ``size`` (2D slices or 3D volumes, each side a multiple of ``SIZE_MULTIPLE``)
in the range -1..1, and has ``start_at(level)`` (its output starts near the training
images' mean). A discriminator maps an image (and the class index) to one logit
per image. Conditioning: one generator for every class, the class entering as a
learned embedding concatenated to the noise; the discriminator is a projection
discriminator (Miyato & Koyama 2018): ``linear(h) + <embed(y), h>`` of its pooled features,
optionally with an auxiliary classifier head (AC-GAN, Odena et al. 2017: ``classes`` logits
from the same pooled features) and a minibatch-standard-deviation channel (Karras et al.
2018: the spread of features across the batch, which lets it see samples that all look alike).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neurodl.models._registry import register_model

# Three stride-2 levels: every side of the image must be a multiple of 8.
SIZE_MULTIPLE = 8
LEVELS = 3


class ConditionalGenerator(nn.Module):
    """MONAI's ``Generator`` (a dense layer to a coarse grid, then transposed convolutions), tanh output.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        size: the image's side lengths, multiples of ``SIZE_MULTIPLE``.
        latent_dim: length of the noise vector.
        classes: number of conditions (0: unconditional).
        width: filters of the finest level (doubled per coarser level).

    Example:
        >>> ConditionalGenerator(3, (16, 16, 16), 8, classes=2, width=4)(torch.zeros(2, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 16, 16, 16])
    """

    def __init__(
        self, spatial_dims: int, size: Sequence[int], latent_dim: int, classes: int = 0, width: int = 16
    ) -> None:
        from monai.networks.nets import Generator  # heavy: only when a model is built

        super().__init__()
        if any(s % SIZE_MULTIPLE for s in size) or len(size) != spatial_dims:
            raise ValueError(
                f"size {tuple(size)} must have {spatial_dims} sides, multiples of {SIZE_MULTIPLE}"
            )
        self.latent_dim = latent_dim
        self.classes = classes
        self.embed = nn.Embedding(classes, latent_dim) if classes else None
        start = [s // 2**LEVELS for s in size]
        self.net = Generator(
            latent_shape=(latent_dim * (2 if classes else 1),),
            start_shape=(8 * width, *start),
            channels=(4 * width, 2 * width, width, 1),
            strides=(2, 2, 2, 1),
            num_res_units=0,
            act=("leakyrelu", {"negative_slope": 0.2}),
            # Instance norm, not DCGAN's batch norm: a sample then does not depend on the others drawn
            # with it, and eval mode (sampling) behaves as in training.
            norm=("instance", {"affine": True}),
        )

    def start_at(self, level: float) -> None:
        """Make the output start near ``level`` (-1..1), the training images' mean, through its last bias.

        Brain images are mostly background: without this the generator starts near 0, far from
        the data, the discriminator wins on brightness alone within a few steps, and the
        generator does not recover (measured on the sample data: output mean 0.2 against
        the images' -0.74 after 80 steps; with it, the brain's shape is learnt).
        """
        last = [m for m in self.net.conv.modules() if isinstance(m, nn.modules.conv._ConvNd)][-1]
        assert last.bias is not None
        with torch.no_grad():
            last.bias.fill_(float(torch.atanh(torch.tensor(level).clamp(-0.95, 0.95))))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs the class of each sample")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return torch.tanh(self.net(z))


class ProjectionDiscriminator(nn.Module):
    """Strided convolutions (MONAI ``Convolution`` blocks, leaky ReLU), mean-pooled, one logit.

    Example:
        >>> d = ProjectionDiscriminator(2, classes=2, width=4)
        >>> d(torch.zeros(3, 1, 16, 16), torch.tensor([0, 1, 1])).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        spatial_dims: int,
        classes: int = 0,
        width: int = 16,
        in_channels: int = 1,
        auxiliary: bool = False,
        minibatch_std: bool = False,
    ) -> None:
        from monai.networks.blocks import Convolution  # heavy: only when a model is built

        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        self.minibatch_std = minibatch_std
        for level in range(LEVELS + 1):
            filters = width * 2**level
            # The minibatch-std channel joins the input of the last block (the coarsest grid).
            extra = 1 if minibatch_std and level == LEVELS else 0
            blocks.append(
                Convolution(
                    spatial_dims,
                    channels + extra,
                    filters,
                    # Three halvings (a side of 8 ends at 1), then a last block at that resolution.
                    strides=2 if level < LEVELS else 1,
                    kernel_size=4 if level < LEVELS else 3,
                    padding=1,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    # No normalisation: instance norm before the mean pooling hides each feature map's
                    # level and scale from the discriminator, and the generator then did not learn
                    # (measured on two classes of discs: sizes right after 300 steps without, wrong with).
                    norm=None,
                )
            )
            channels = filters
        self.features = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels, 1)
        self.embed = nn.Embedding(classes, channels) if classes else None
        # AC-GAN: the discriminator also names the class of an image, from the same pooled features.
        self.classifier = nn.Linear(channels, classes) if auxiliary and classes else None

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        groups: int = 1,
        return_classes: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One logit per image (real: positive); with ``return_classes`` also (N, classes) class logits.

        ``groups``: the batch is that many equal consecutive parts (e.g. real images, then
        synthetic ones) whose minibatch standard deviations are computed apart.
        """
        h = x
        for index, block in enumerate(self.features):
            if self.minibatch_std and index == LEVELS:
                h = torch.cat([h, minibatch_std(h, groups)], dim=1)
            h = block(h)
        h = h.flatten(2).mean(dim=2)
        out = self.linear(h)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs the class of each image")
            out = out + (self.embed(labels) * h).sum(dim=1, keepdim=True)
        if not return_classes:
            return out
        if self.classifier is None:
            raise ValueError("this discriminator has no auxiliary classifier (auxiliary=True, classes > 0)")
        return out, self.classifier(h)


def minibatch_std(h: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """A (N, 1, ...) channel: per group of the batch, the mean standard deviation of ``h`` across its images.

    Images that all look alike give a small value, which the discriminator can learn to
    call synthetic: the generator is pushed to vary. The batch is ``groups`` equal parts.
    """
    n = h.shape[0]
    if groups < 1 or n % groups:
        raise ValueError(f"a batch of {n} does not split into {groups} equal groups")
    parts = h.float().reshape(groups, n // groups, *h.shape[1:])
    spread = (parts.var(dim=1, unbiased=False) + 1e-8).sqrt().flatten(1).mean(dim=1)  # (groups,)
    value = spread.repeat_interleave(n // groups).to(h.dtype)
    return value.reshape(n, *[1] * (h.ndim - 1)).expand(n, 1, *h.shape[2:])


@register_model(
    "generate",
    "dcgan",
    "DCGAN-style generator (MONAI Generator: dense layer, 3 transposed convolutions, instance norm, tanh); label embedding",
)
def dcgan(
    spatial_dims: int = 3,
    size: Sequence[int] = (32, 32, 32),
    latent_dim: int = 64,
    classes: int = 0,
    width: int = 16,
) -> ConditionalGenerator:
    return ConditionalGenerator(spatial_dims, tuple(size), latent_dim, classes, width)


@register_model(
    "gan_discriminator",
    "projection",
    "projection discriminator (strided MONAI convolutions, leaky ReLU, mean pooling, class-embedding projection; optional auxiliary classifier head and minibatch-std channel)",
)
def projection(
    spatial_dims: int = 3,
    classes: int = 0,
    width: int = 16,
    auxiliary: bool = False,
    minibatch_std: bool = False,
) -> ProjectionDiscriminator:
    return ProjectionDiscriminator(
        spatial_dims, classes, width, auxiliary=auxiliary, minibatch_std=minibatch_std
    )
