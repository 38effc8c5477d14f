"""3D classifiers for NIfTI volumes: the lecture's CNN and MONAI's DenseNet/ResNet.

Every builder takes ``in_channels`` and ``out_features`` (1 logit for two
classes, K for K) and sets ``gradcam_layer``: the module whose activations
Grad-CAM explains.
"""

from __future__ import annotations

import torch
from torch import nn

from neurodl.models._registry import register_model


class ConvNet3D(nn.Module):
    """Convolution -> ReLU -> max-pooling blocks, then global pooling and a dense layer.

    The CNN of the lecture in 3D: each block has ``width * 2**i`` filters of
    3x3x3 (batch-normalised), a ReLU and a 2x2x2 max-pooling that halves the size.

    Args:
        in_channels: input channels (image columns).
        out_features: logits.
        depth: number of conv/pool blocks.
        width: filters of the first block.
        dropout: dropout before the dense layer.

    Example:
        >>> ConvNet3D(1, 1)(torch.zeros(2, 1, 32, 32, 32)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self, in_channels: int, out_features: int, depth: int = 4, width: int = 16, dropout: float = 0.2
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            filters = width * 2**i
            blocks += [
                nn.Conv3d(channels, filters, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(filters),
                nn.ReLU(),
                nn.MaxPool3d(2, ceil_mode=True),
            ]
            channels = filters
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, out_features)
        )
        # Grad-CAM explains the last ReLU (before its pooling): the finest deep feature map.
        self.gradcam_layer = f"features.{4 * depth - 2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "classify",
    "cnn",
    "the lecture's CNN in 3D: conv->ReLU->pool blocks (--depth, --width, --dropout); fast on CPU",
)
def cnn(
    in_channels: int = 1,
    out_features: int = 1,
    depth: int = 4,
    width: int = 16,
    dropout: float = 0.2,
    **_: object,
) -> nn.Module:
    return ConvNet3D(in_channels, out_features, depth=depth, width=width, dropout=dropout)


@register_model("classify", "densenet121", "MONAI DenseNet121 (3D); needs a GPU for real-sized brains")
def densenet121(in_channels: int = 1, out_features: int = 1, dropout: float = 0.0, **_: object) -> nn.Module:
    from monai.networks.nets import DenseNet121

    model = DenseNet121(
        spatial_dims=3, in_channels=in_channels, out_channels=out_features, dropout_prob=dropout
    )
    vars(model)["gradcam_layer"] = "class_layers.relu"  # a plain attribute, read by interpret
    return model


def _resnet(builder_name: str, in_channels: int, out_features: int) -> nn.Module:
    from monai.networks import nets

    model = getattr(nets, builder_name)(
        spatial_dims=3, n_input_channels=in_channels, num_classes=out_features
    )
    model.gradcam_layer = "layer4"
    return model


@register_model("classify", "resnet18", "MONAI ResNet-18 (3D)")
def resnet18(in_channels: int = 1, out_features: int = 1, **_: object) -> nn.Module:
    return _resnet("resnet18", in_channels, out_features)


@register_model("classify", "resnet50", "MONAI ResNet-50 (3D); large: GPU recommended")
def resnet50(in_channels: int = 1, out_features: int = 1, **_: object) -> nn.Module:
    return _resnet("resnet50", in_channels, out_features)
