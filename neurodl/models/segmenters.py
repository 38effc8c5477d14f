"""3D segmentation networks (MONAI), by name.

Every builder takes ``in_channels`` and ``out_channels`` (labels + background)
and sets ``patch_multiple`` (patch sizes must be a multiple of it) and
``min_patch`` (the smallest patch side it trains on).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from neurodl.models._registry import register_model


def with_patch_limits(model: nn.Module, *, multiple: int, smallest: int) -> nn.Module:
    """Record on ``model`` the patch sides it accepts: a multiple of ``multiple``, at least ``smallest``."""
    # Plain attributes of the module (not parameters or buffers), read by the segment task.
    vars(model).update(patch_multiple=multiple, min_patch=smallest)
    return model


def _unet_levels(in_channels: int, out_channels: int, dropout: float) -> dict[str, Any]:
    """The layout MONAI's UNet and AttentionUnet share here: 3D, 16-128 filters, 3 down-samplings."""
    return {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": (16, 32, 64, 128),
        "strides": (2, 2, 2),
        "dropout": dropout,
    }


@register_model(
    "segment", "unet", "MONAI residual U-Net (16-128 filters, 3 down-samplings); patches: multiple of 8"
)
def unet(in_channels: int = 1, out_channels: int = 2, dropout: float = 0.0, **_: object) -> nn.Module:
    from monai.networks.nets import UNet

    model = UNet(**_unet_levels(in_channels, out_channels, dropout), num_res_units=2)
    return with_patch_limits(model, multiple=8, smallest=16)


@register_model("segment", "segresnet", "MONAI SegResNet (8 initial filters); patches: multiple of 8")
def segresnet(in_channels: int = 1, out_channels: int = 2, dropout: float = 0.0, **_: object) -> nn.Module:
    from monai.networks.nets import SegResNet

    model = SegResNet(
        spatial_dims=3,
        init_filters=8,
        in_channels=in_channels,
        out_channels=out_channels,
        dropout_prob=dropout or None,
    )
    return with_patch_limits(model, multiple=8, smallest=16)


@register_model("segment", "attention_unet", "MONAI Attention U-Net (16-128 filters); patches: multiple of 8")
def attention_unet(
    in_channels: int = 1, out_channels: int = 2, dropout: float = 0.0, **_: object
) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    model = AttentionUnet(**_unet_levels(in_channels, out_channels, dropout))
    return with_patch_limits(model, multiple=8, smallest=16)


@register_model(
    "segment",
    "swin_unetr",
    "MONAI SwinUNETR (feature size 12); patches: multiple of 32, at least 64; GPU recommended",
)
def swin_unetr(in_channels: int = 1, out_channels: int = 2, dropout: float = 0.0, **_: object) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    model = SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=12, spatial_dims=3, drop_rate=dropout
    )
    # Five halvings: a 32-voxel patch leaves a 1-voxel bottleneck that instance norm cannot train on.
    return with_patch_limits(model, multiple=32, smallest=64)
