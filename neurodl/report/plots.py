"""Figures written into run directories. Every function returns a matplotlib Figure.

The Agg backend is selected on import: runs happen on headless servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: Sequence[dict[str, float]], *, title: str = "") -> Any:
    """Training and validation loss per epoch, plus the monitored metrics if any.

    ``history`` may hold several runs (a ``fold`` key): one line each.
    """
    folds = sorted({int(r.get("fold", 0)) for r in history})
    # Every validation metric (a segmentation's Dice of each label), not only the first two.
    metric_keys = [k for k in (history[0] if history else {}) if k.startswith("val_") and k != "val_loss"][:8]
    fig, axes = plt.subplots(
        1, 1 + bool(metric_keys), figsize=(5.5 * (1 + bool(metric_keys)), 4), squeeze=False
    )
    loss_ax = axes[0, 0]
    for fold in folds:
        rows = [r for r in history if int(r.get("fold", 0)) == fold]
        epochs = [r["epoch"] for r in rows]
        tag = f" (fold {fold})" if len(folds) > 1 else ""
        alpha = 0.8 if len(folds) == 1 else 0.5
        line = loss_ax.plot(epochs, [r["train_loss"] for r in rows], alpha=alpha, label=f"train{tag}")[0]
        if "val_loss" in rows[0]:
            loss_ax.plot(
                epochs,
                [r["val_loss"] for r in rows],
                "--",
                color=line.get_color(),
                alpha=alpha,
                label=f"validation{tag}",
            )
        if metric_keys:
            for key in metric_keys:
                axes[0, 1].plot(epochs, [r[key] for r in rows], alpha=alpha, label=f"{key[4:]}{tag}")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.legend(fontsize=7)
    if metric_keys:
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_title("Validation metrics")
        axes[0, 1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Any:
    """ROC curve of the positive class (binary) or one curve per class (one-vs-rest)."""
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    targets = [1] if len(classes) == 2 else list(range(len(classes)))
    for k in targets:
        truth = (np.asarray(y_true) == k).astype(int)
        if truth.min() == truth.max():
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, k])
        ax.plot(fpr, tpr, label=f"{classes[k]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Any:
    """Confusion matrix with counts in each cell (rows: true, columns: predicted)."""
    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    return fig


def predicted_vs_true(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    label: str = "target",
    groups: Sequence[str] | None = None,
    legend: str = "",
) -> Any:
    """Scatter of predictions against true values, with the identity line (coloured by ``groups``)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    names = [str(g) for g in groups] if groups is not None else [""] * len(y_true)
    for name in sorted(set(names)):
        chosen = np.asarray([g == name for g in names])
        ax.scatter(
            np.asarray(y_true)[chosen], np.asarray(y_pred)[chosen], s=14, alpha=0.7, label=name or None
        )
    low = float(min(np.min(y_true), np.min(y_pred)))
    high = float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([low, high], [low, high], ":", color="grey")
    if groups is not None:
        ax.legend(title=legend or None, fontsize=8)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title("Predicted vs true")
    fig.tight_layout()
    return fig


def residuals_by_group(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], *, label: str = "target", legend: str = ""
) -> Any:
    """Residuals (predicted - true) per group: a box with every point, and each group's mean."""
    residual = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    names = [str(g) for g in groups]
    levels = sorted(set(names))
    values = [residual[np.asarray([g == level for g in names])] for level in levels]
    fig, ax = plt.subplots(figsize=(1.4 * len(levels) + 2.5, 4.0))
    ax.boxplot(values, showfliers=False)
    ax.set_xticks(
        range(1, len(levels) + 1), [f"{level}\n(n={len(v)})" for level, v in zip(levels, values, strict=True)]
    )
    jitter = np.random.default_rng(0)
    for k, v in enumerate(values, start=1):
        ax.scatter(k + jitter.uniform(-0.12, 0.12, len(v)), v, s=12, alpha=0.7)
        ax.plot([k - 0.3, k + 0.3], [v.mean(), v.mean()], color="black", lw=1.5)
    ax.axhline(0.0, ls=":", color="grey")
    ax.set_xlabel(legend)
    ax.set_ylabel(f"predicted - true {label}")
    ax.set_title(f"Residuals by {legend}" if legend else "Residuals")
    fig.tight_layout()
    return fig


def latent_scatter(
    codes: np.ndarray, groups: Sequence[str] | None = None, *, title: str = "", legend: str = ""
) -> Any:
    """The first two principal components of latent codes (one point per image), coloured by group."""
    centred = np.asarray(codes, dtype=float) - np.mean(codes, axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T, np.zeros(len(centred))]
    variance = singular**2 / max(float((singular**2).sum()), 1e-12)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    labels = list(groups) if groups is not None else [""] * len(components)
    for name in sorted(set(labels)):
        chosen = np.asarray([g == name for g in labels])
        ax.scatter(components[chosen, 0], components[chosen, 1], s=18, alpha=0.8, label=name or None)
    if groups is not None:
        ax.legend(title=legend or None, fontsize=8)
    ax.set_xlabel(f"PC 1 ({100 * variance[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * variance[1]:.0f} % of variance)" if len(variance) > 1 else "PC 2")
    ax.set_title(title)
    fig.tight_layout()
    return fig
