"""Loss and probabilities of a classifier, shared by every classification task.

Two classes use one logit with a sigmoid and binary cross-entropy (the
lecture's logistic regression); K > 2 classes use K logits with a softmax and
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def n_outputs(n_classes: int) -> int:
    """Network outputs for ``n_classes``: 1 for a binary problem, K otherwise."""
    return 1 if n_classes == 2 else n_classes


def classification_loss(
    output: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary (one logit) or multiclass cross-entropy, optionally weighted per class."""
    if output.shape[1] == 1:
        pos_weight = None
        if class_weights is not None:
            pos_weight = (class_weights[1] / class_weights[0]).to(output.device)
        return F.binary_cross_entropy_with_logits(output.squeeze(1), y.float(), pos_weight=pos_weight)
    weight = class_weights.to(output.device) if class_weights is not None else None
    return F.cross_entropy(output, y.long(), weight=weight)


def class_probabilities(output: torch.Tensor) -> np.ndarray:
    """(n, K) probabilities: sigmoid for one logit (column 1 = positive class), softmax otherwise."""
    output = output.detach().float().cpu()
    if output.shape[1] == 1:
        p = torch.sigmoid(output.squeeze(1))
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(output, dim=1).numpy()


def balanced_class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weights n / (K * n_c): rare classes count as much as common ones."""
    counts = np.bincount(np.asarray(y, dtype=int), minlength=n_classes).astype(float)
    counts[counts == 0] = 1.0
    return torch.tensor(len(y) / (n_classes * counts), dtype=torch.float32)


def save_classification_plots(
    run: Any,
    prefix: str,
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    confusion: Sequence[Sequence[int]],
) -> list[str]:
    """ROC curve (when both classes are present) and confusion matrix PNGs; returns their names."""
    from neurodl.report import plots

    written = []
    if len(np.unique(y)) > 1:
        run.save_figure(f"{prefix}roc.png", plots.roc_curves(y, proba, classes))
        written.append(f"{prefix}roc.png")
    run.save_figure(f"{prefix}confusion_matrix.png", plots.confusion_matrix_figure(confusion, classes))
    written.append(f"{prefix}confusion_matrix.png")
    return written
