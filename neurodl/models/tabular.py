"""Models for tables of biomarkers: linear and logistic regression, the MLP.

With no hidden layer the MLP *is* the lecture's linear regression (identity
output, MSE) or logistic regression (sigmoid/softmax output, cross-entropy);
the output non-linearity lives in the loss, so the network returns logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neurodl.models._registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """Dense layers ``in -> hidden... -> out`` with an activation and dropout between them.

    Args:
        in_features: number of input features.
        out_features: outputs (1 for regression or binary classification, K for K classes).
        hidden: sizes of the hidden layers; empty for a linear model.
        activation: ``relu``, ``tanh`` or ``sigmoid``.
        dropout: probability of zeroing a hidden unit during training.

    Example:
        >>> MLP(2, 1, hidden=(16,), activation="tanh")(torch.zeros(5, 2)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model("biomarkers", "mlp", "multilayer perceptron (--hidden 64,32, --activation, --dropout)")
def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (64, 32),
    activation: str = "relu",
    dropout: float = 0.0,
) -> MLP:
    return MLP(in_features, out_features, hidden, activation, dropout)


@register_model(
    "biomarkers", "logistic", "logistic regression: one linear layer + sigmoid/softmax (--hidden none)"
)
def logistic(in_features: int, out_features: int, **_: object) -> MLP:
    return MLP(in_features, out_features, hidden=())


@register_model("biomarkers", "linear", "linear regression: one linear layer, MSE (--hidden none)")
def linear(in_features: int, out_features: int = 1, **_: object) -> MLP:
    return MLP(in_features, out_features, hidden=())
