"""Metrics shared by tasks (scikit-learn underneath), as plain floats for JSON."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity, specificity, F1, ROC AUC and the confusion matrix.

    Args:
        y_true: class indices.
        proba: (n, K) class probabilities; for two classes column 1 is the positive class.
        classes: class names, in column order.

    Binary problems report sensitivity/specificity/F1 of the positive class;
    multiclass problems report their macro averages and a one-vs-rest AUC.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    k = len(classes)
    y_pred = proba.argmax(axis=1)
    labels = list(range(k))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.diag(cm) / cm.sum(axis=1)
        negatives = cm.sum() - cm.sum(axis=1)
        specificity = (negatives - (cm.sum(axis=0) - np.diag(cm))) / negatives
    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(present) < 2:
            auc = math.nan
        elif k == 2:
            auc = float(roc_auc_score(y_true, proba[:, 1]))
        elif len(present) == k:
            auc = float(roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
        else:
            auc = math.nan
        metrics: dict[str, Any] = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        }
    if k == 2:
        metrics["sensitivity"] = float(recall[1])
        metrics["specificity"] = float(specificity[1])
        metrics["f1"] = float(f1_score(y_true, y_pred, pos_label=1, zero_division=0))
    else:
        metrics["sensitivity"] = float(np.nanmean(recall))
        metrics["specificity"] = float(np.nanmean(specificity))
        metrics["f1"] = float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))
    metrics["roc_auc"] = auc
    metrics["confusion_matrix"] = cm.tolist()
    return metrics


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (average ranks: ties count half), as scikit-learn computes it."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def epoch_classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and ROC AUC in plain numpy, for every epoch's validation.

    Identical to :func:`classification_metrics` (to 1e-15) but ~20x cheaper:
    scikit-learn's input checks cost more than a training epoch on a small table.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    k = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    counts = np.bincount(y_true, minlength=k)
    hits = np.bincount(y_true[y_pred == y_true], minlength=k)
    present = counts > 0
    if k == 2:
        auc = rank_auc(y_true == 1, proba[:, 1])
    elif present.all():
        auc = float(np.mean([rank_auc(y_true == c, proba[:, c]) for c in range(k)]))
    else:
        auc = math.nan
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(np.mean(hits[present] / counts[present])),
        "roc_auc": auc,
    }


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, training_mean: float | None = None
) -> dict[str, float]:
    """MAE, RMSE, R² and Pearson's r in the target's own units (plain numpy: cheap every epoch).

    With ``training_mean``, ``baseline_mae`` is the error of predicting that mean for
    everyone: a model is only useful where its MAE is below it.
    R² and r are undefined (nan) for fewer than two values or a constant truth.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    error = y_pred - y_true
    spread = float(np.sum((y_true - y_true.mean()) ** 2)) if len(y_true) else 0.0
    defined = len(y_true) > 1 and spread > 0
    r = math.nan
    if defined and float(np.std(y_pred)) > 0:
        r = float(np.corrcoef(y_true, y_pred)[0, 1])
    metrics = {
        "mae": float(np.mean(np.abs(error))) if len(error) else math.nan,
        "rmse": float(math.sqrt(np.mean(error**2))) if len(error) else math.nan,
        "r2": 1.0 - float(np.sum(error**2)) / spread if defined else math.nan,
        "pearson_r": r,
    }
    if training_mean is not None:
        metrics["baseline_mae"] = float(np.mean(np.abs(y_true - training_mean))) if len(y_true) else math.nan
    return metrics


def summarize_folds(folds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation across folds of every scalar metric."""
    summary: dict[str, dict[str, float]] = {}
    for key in folds[0]:
        values = [f[key] for f in folds if isinstance(f.get(key), int | float)]
        if len(values) == len(folds):
            arr = np.asarray(values, dtype=float)
            summary[key] = {
                "mean": float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan,
                "std": float(np.nanstd(arr)) if np.isfinite(arr).any() else math.nan,
            }
    return summary


def image_scores(x: Any, reconstruction: Any, mask: Any = None) -> dict[str, float]:
    """MSE, MAE, PSNR and SSIM of a reconstruction or synthetic image ``reconstruction`` against ``x``.

    Both are (C, *spatial) tensors in the same units (normalised for an autoencoder,
    the target modality's own units for image translation).

    With ``mask`` (same grid, > 0 inside), MSE, MAE and PSNR are computed inside the
    mask; SSIM is a windowed measure and always covers the whole image.
    PSNR and SSIM take the image's own intensity range as the data range.
    """
    import torch
    from monai.metrics import PSNRMetric, SSIMMetric

    from neurodl.errors import DataError

    x, reconstruction = x.float(), reconstruction.float()
    data_range = max(float(x.max() - x.min()), 1e-6)
    inside = (mask > 0).expand_as(x) if mask is not None else torch.ones_like(x, dtype=torch.bool)
    if not inside.any():
        raise DataError("the mask holds no voxel > 0 on this image's grid.", "Check the --mask column.")
    difference = (reconstruction - x)[inside]
    mse = float((difference**2).mean())
    psnr = float(
        cast(
            torch.Tensor,
            PSNRMetric(max_val=data_range)(reconstruction[inside][None, None], x[inside][None, None]),
        ).mean()
    )
    spatial = x.ndim - 1
    kernel = min(7, *[s if s % 2 else s - 1 for s in x.shape[1:]])
    ssim = float(
        cast(
            torch.Tensor,
            SSIMMetric(spatial_dims=spatial, data_range=data_range, win_size=kernel)(
                reconstruction[None], x[None]
            ),
        ).mean()
    )
    return {"mse": mse, "mae": float(difference.abs().mean()), "psnr": psnr, "ssim": ssim}
