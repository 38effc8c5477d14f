"""Model + loss of a task with one output per sample (a class or a value per image or table row), for the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neurodl.data.tabular import TargetEncoder
from neurodl.tasks._classification import class_probabilities, classification_loss
from neurodl.tasks._regression import regression_loss
from neurodl.tasks.metrics import epoch_classification_metrics, regression_metrics


class SupervisedModule:
    """Model + loss of a task with one output (a class or a value) per sample, for the engine.

    Subclasses give the loss, what a prediction reports and the validation metrics.
    """

    default_monitor = "val_loss"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def outputs(self, output: torch.Tensor) -> np.ndarray:
        """What a prediction reports: class probabilities (n, K) or values (n,)."""
        raise NotImplementedError

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": self.loss(self.model(x), y)}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"output": self.model(x), "target": y}

    @torch.no_grad()
    def predict(self, batches: Any) -> np.ndarray:
        """:meth:`outputs` for every batch of ``batches``."""
        self.model.eval()
        device = next(self.model.parameters()).device
        return self.outputs(torch.cat([self.model(x.to(device)).float().cpu() for x, _ in batches]))


class ClassifyModule(SupervisedModule):
    """Image classification: cross-entropy (optionally class-weighted); outputs are probabilities."""

    def __init__(self, model: torch.nn.Module, class_weights: torch.Tensor | None = None) -> None:
        super().__init__(model)
        self.class_weights = class_weights

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return classification_loss(output, y, self.class_weights)

    def outputs(self, output: torch.Tensor) -> np.ndarray:
        return class_probabilities(output)

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        output, y = outputs["output"], outputs["target"].long()
        return {
            "loss": float(self.loss(output, y)),
            **epoch_classification_metrics(y.numpy(), self.outputs(output)),
        }


class RegressModule(SupervisedModule):
    """Image regression: the network predicts the target standardised on the training rows.

    Targets arrive in their own units (years, points); outputs are restored to them,
    so every metric and prediction is in those units. Early stopping watches the
    validation MAE.
    """

    default_monitor = "val_mae"

    def __init__(self, model: torch.nn.Module, target: TargetEncoder, loss: str = "mse") -> None:
        super().__init__(model)
        self.target = target
        self.kind = loss

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        standardised = (y.float() - self.target.center) / self.target.scale
        return regression_loss(output, standardised, self.kind)

    def outputs(self, output: torch.Tensor) -> np.ndarray:
        return self.target.restore(output.detach().float().cpu().reshape(-1).numpy())

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        output, y = outputs["output"], outputs["target"]
        return {"loss": float(self.loss(output, y)), **regression_metrics(y.numpy(), self.outputs(output))}
