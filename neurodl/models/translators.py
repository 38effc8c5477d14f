"""Image-to-image translation (pix2pix): generators and PatchGAN discriminators, 2D or 3D.

Generators (task ``translate``) map a source image (``in_channels``) to a synthetic
image (``out_channels``) of the same size, any size divisible by ``SIZE_MULTIPLE``;
they end in a linear layer (no tanh), so the target's normalised range may be
exceeded where the data asks for it. Discriminators (task ``discriminator``) see
the source and a real or synthetic image stacked as channels and score each patch
of it: ``model(x)`` returns the map of patch logits.
"""

from __future__ import annotations

import torch
from torch import nn

from neurodl.models._registry import register_model

# Four stride-2 levels: a patch or slice side must be a multiple of 16.
SIZE_MULTIPLE = 16


def _levels(width: int) -> tuple[int, ...]:
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


@register_model(
    "translate", "unet", "U-Net generator (pix2pix): skip connections at every resolution, instance norm"
)
def unet_generator(
    spatial_dims: int, in_channels: int, out_channels: int, width: int = 32, dropout: float = 0.0
) -> nn.Module:
    # MONAI's BasicUNet, not its UNet: that one strides from its first layer, so fine detail only
    # reaches the output from half resolution (measured on the sample data: L1 0.43 vs 0.09 after
    # 150 steps, with blurred, checkered images).
    from monai.networks.nets import BasicUNet  # heavy: only when a model is built

    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=(width, width, 2 * width, 4 * width, 8 * width, width),
        norm=("instance", {"affine": True}),
        dropout=dropout,
        upsample="deconv",
    )


@register_model("translate", "attention_unet", "Attention U-Net generator (attention gates on the skips)")
def attention_unet_generator(
    spatial_dims: int, in_channels: int, out_channels: int, width: int = 32, dropout: float = 0.0
) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=_levels(width),
        strides=(2, 2, 2, 2),
        dropout=dropout,
    )


class _LastOutput(nn.Module):
    """MONAI's PatchDiscriminator returns every layer's features: keep the patch logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def _patch_discriminator(spatial_dims: int, in_channels: int, width: int, layers: int) -> nn.Module:
    """MONAI's PatchDiscriminator (instance norm, one logit per patch) with ``layers`` strided layers."""
    from monai.networks.nets import PatchDiscriminator  # heavy: only when a model is built

    return _LastOutput(
        PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=width,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=layers,
            norm="INSTANCE",
        )
    )


@register_model("discriminator", "patchgan", "PatchGAN discriminator (pix2pix, 3 layers: ~70-voxel patches)")
def patchgan(spatial_dims: int, in_channels: int, width: int = 32) -> nn.Module:
    return _patch_discriminator(spatial_dims, in_channels, width, layers=3)


@register_model(
    "discriminator", "patchgan_small", "PatchGAN discriminator, 2 layers: smaller patches, fewer weights"
)
def patchgan_small(spatial_dims: int, in_channels: int, width: int = 32) -> nn.Module:
    return _patch_discriminator(spatial_dims, in_channels, width, layers=2)
