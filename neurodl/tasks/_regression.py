"""Loss and plots of a regression on a continuous target, shared by biomarkers and image regression.

The network predicts the target standardised on the training rows (mean 0, SD 1), so
one learning rate suits ages in years and volumes in millilitres alike; predictions are
restored to the target's own units before anything is scored or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("mse", "l1", "huber")


def regression_loss(output: torch.Tensor, y: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean squared, absolute or Huber error (delta = 1 SD of the target) of one output per row."""
    prediction = output.reshape(-1).float()
    y = y.reshape(-1).float().to(prediction.device)
    if kind == "l1":
        return F.l1_loss(prediction, y)
    if kind == "huber":
        return F.huber_loss(prediction, y, delta=1.0)
    return F.mse_loss(prediction, y)


def save_regression_plots(
    run: Any,
    prefix: str,
    truth: np.ndarray,
    predicted: np.ndarray,
    label: str,
    groups: Sequence[str] | None = None,
    group_name: str = "",
) -> list[str]:
    """Predicted-vs-true scatter (coloured by ``groups``) and, with groups, residuals per group."""
    from neurodl.report import plots

    truth = np.asarray(truth, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    run.save_figure(
        f"{prefix}predicted_vs_true.png",
        plots.predicted_vs_true(truth, predicted, label=label, groups=groups, legend=group_name),
    )
    written = [f"{prefix}predicted_vs_true.png"]
    if groups is not None:
        name = f"{prefix}residuals_by_{_file_part(group_name)}.png"
        run.save_figure(
            name, plots.residuals_by_group(truth, predicted, groups, label=label, legend=group_name)
        )
        written.append(name)
    return written


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "group"
