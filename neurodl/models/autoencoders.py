"""Convolutional autoencoders with a vector code: MONAI's AutoEncoder (plain) and VarAutoEncoder (VAE).

Every builder takes ``spatial_dims`` (3: whole volumes, 2: slices), ``in_channels``,
``latent_dim`` and ``size`` (the input's side lengths, each a multiple of
``size_multiple``) and returns a module with the same interface:

- ``model(x)`` -> ``(reconstruction, mu, logvar)``; ``logvar`` is ``None`` for the plain autoencoder;
- ``model.encode_mean(x)`` -> the code (the VAE's posterior mean);
- ``model.decode(z)`` -> the image of a code (a VAE samples new images by decoding z ~ N(0, I));
- ``model.variational`` tells whether the loss needs the KL term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurodl.models._registry import register_model

# Three stride-2 levels: each side of the input must be a multiple of 8 for the output to match it.
STRIDES = (2, 2, 2)
SIZE_MULTIPLE = 8


def _channels(width: int) -> tuple[int, int, int]:
    return (width, 2 * width, 4 * width)


def _final_size(size: Sequence[int]) -> np.ndarray:
    return np.asarray([s // 2 ** len(STRIDES) for s in size], dtype=int)


class LatentAutoEncoder(nn.Module):
    """MONAI's convolutional ``AutoEncoder`` with a dense bottleneck of ``latent_dim`` units.

    Example:
        >>> LatentAutoEncoder(3, 1, 8, (16, 16, 16))(torch.zeros(2, 1, 16, 16, 16))[0].shape
        torch.Size([2, 1, 16, 16, 16])
    """

    variational = False
    size_multiple = SIZE_MULTIPLE

    def __init__(
        self, spatial_dims: int, in_channels: int, latent_dim: int, size: Sequence[int], width: int = 16
    ) -> None:
        from monai.networks.nets import AutoEncoder  # heavy: only when a model is built

        super().__init__()
        channels = _channels(width)
        self.net = AutoEncoder(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=channels,
            strides=STRIDES,
        )
        self.final_size = _final_size(size)
        linear = int(np.prod(self.final_size)) * channels[-1]
        self.to_code = nn.Linear(linear, latent_dim)
        self.from_code = nn.Linear(latent_dim, linear)
        self.encoded_channels = channels[-1]

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.intermediate(self.net.encode(x))
        return self.to_code(h.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.from_code(z)).view(z.shape[0], self.encoded_channels, *self.final_size)
        return self.net.decode(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z = self.encode_mean(x)
        return self.decode(z), z, None


class VariationalAutoEncoder(nn.Module):
    """MONAI's ``VarAutoEncoder`` without the output sigmoid (inputs are z-scored), mean code at inference.

    Example:
        >>> VariationalAutoEncoder(2, 1, 8, (16, 16))(torch.zeros(2, 1, 16, 16))[2].shape
        torch.Size([2, 8])
    """

    variational = True
    size_multiple = SIZE_MULTIPLE

    def __init__(
        self, spatial_dims: int, in_channels: int, latent_dim: int, size: Sequence[int], width: int = 16
    ) -> None:
        from monai.networks.nets import VarAutoEncoder  # heavy: only when a model is built

        super().__init__()
        self.net = VarAutoEncoder(
            spatial_dims=spatial_dims,
            in_shape=(in_channels, *size),
            out_channels=in_channels,
            latent_size=latent_dim,
            channels=_channels(width),
            strides=STRIDES,
            use_sigmoid=False,
            use_mean_at_inference=True,
        )

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode_forward(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The image of a code: sampling from the prior decodes z ~ N(0, I)."""
        return self.net.decode_forward(z, use_sigmoid=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reconstruction, mu, logvar, _ = self.net(x)
        return reconstruction, mu, logvar


@register_model("autoencode", "ae", "convolutional autoencoder (MONAI AutoEncoder) with a dense code")
def ae(
    spatial_dims: int = 3,
    in_channels: int = 1,
    latent_dim: int = 32,
    size: Sequence[int] = (32,) * 3,
    width: int = 16,
) -> LatentAutoEncoder:
    return LatentAutoEncoder(spatial_dims, in_channels, latent_dim, size, width)


@register_model("autoencode", "vae", "variational autoencoder (MONAI VarAutoEncoder), loss + beta x KL")
def vae(
    spatial_dims: int = 3,
    in_channels: int = 1,
    latent_dim: int = 32,
    size: Sequence[int] = (32,) * 3,
    width: int = 16,
) -> VariationalAutoEncoder:
    return VariationalAutoEncoder(spatial_dims, in_channels, latent_dim, size, width)
