"""How a model is trained and evaluated: one validation split, or K folds then a final model.

Shared by every supervised task, so splits and their reporting mean the same
everywhere. The task supplies three functions: ``fit`` (train on rows, select
on validation rows), ``predict`` (outputs for rows) and ``score`` (metrics of
outputs for rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from neurodl.data.splits import kfold_by_participant, split_by_participant
from neurodl.engine import FitResult
from neurodl.tasks.metrics import summarize_folds


class Fitted(Protocol):
    """What a task's ``fit`` returns: anything with the engine's result."""

    result: FitResult


FitFn = Callable[[np.ndarray, "np.ndarray | None", str, str, "int | None"], Any]
PredictFn = Callable[[Any, np.ndarray], np.ndarray]
ScoreFn = Callable[[np.ndarray, np.ndarray], dict[str, Any]]


@dataclass
class ProtocolResult:
    """The final model and its honest evaluation."""

    final: Any
    rows: np.ndarray
    outputs: np.ndarray
    metrics: dict[str, Any]
    headline: dict[str, Any]
    headline_std: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, Any] = field(default_factory=dict)
    evaluation: str = ""


def _participants(groups: np.ndarray, rows: np.ndarray) -> list[str]:
    return sorted(set(groups[rows].tolist()))


def run_protocol(
    groups: np.ndarray,
    strata: np.ndarray,
    rows: np.ndarray,
    *,
    cv: int,
    val_fraction: float,
    seed: int,
    fit: FitFn,
    predict: PredictFn,
    score: ScoreFn,
    unit: str = "rows",
) -> ProtocolResult:
    """Train and evaluate on ``rows`` (indices into ``groups``/``strata``).

    Without ``cv``: participants are split into training and validation sets;
    early stopping and model selection use the validation set, whose metrics
    at the best epoch are reported.

    With ``cv`` K: K folds grouped by participant and stratified; in each fold
    an inner validation split of the training rows drives early stopping and
    the held-out fold is predicted. Metrics are reported per fold, as mean ±
    std and on the pooled out-of-fold predictions. The final model is then
    trained on every row for the median best epoch of the folds.
    """
    splits: dict[str, Any] = {"seed": seed}
    if not cv:
        train_local, val_local = split_by_participant(groups[rows], strata[rows], val_fraction, seed)
        train_rows, val_rows = rows[train_local], rows[val_local]
        final = fit(train_rows, val_rows, "final", "training", None)
        outputs = predict(final, val_rows)
        metrics = score(val_rows, outputs)
        splits.update(
            {"train": _participants(groups, train_rows), "validation": _participants(groups, val_rows)}
        )
        evaluation = f"validation split ({len(val_rows)} {unit}, {len(splits['validation'])} participants) used for early stopping and model selection"
        return ProtocolResult(
            final=final,
            rows=val_rows,
            outputs=outputs,
            metrics={
                "evaluation": evaluation,
                "monitor": final.result.monitor,
                "validation": metrics,
                "best_epoch": final.result.best_epoch,
            },
            headline={k: v for k, v in metrics.items() if not isinstance(v, list)},
            history=[dict(r) for r in final.result.history],
            splits=splits,
            evaluation=evaluation,
        )

    folds = kfold_by_participant(groups[rows], strata[rows], cv, seed)
    fold_metrics: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    pooled: np.ndarray | None = None
    splits["folds"] = []
    for k, (train_local, test_local) in enumerate(folds, start=1):
        train_rows, test_rows = rows[train_local], rows[test_local]
        fit_local, val_local = split_by_participant(
            groups[train_rows], strata[train_rows], val_fraction, seed + k
        )
        fitted = fit(train_rows[fit_local], train_rows[val_local], f"fold-{k}", f"fold {k}/{cv}", None)
        outputs = predict(fitted, test_rows)
        if pooled is None:
            pooled = np.zeros((len(rows), *outputs.shape[1:]), dtype=float)
        pooled[test_local] = outputs
        metrics = score(test_rows, outputs)
        metrics["best_epoch"] = fitted.result.best_epoch
        fold_metrics.append(metrics)
        history += [{"fold": k, **r} for r in fitted.result.history]
        splits["folds"].append(
            {
                "fold": k,
                "test": _participants(groups, test_rows),
                "validation": _participants(groups, train_rows[val_local]),
            }
        )
    assert pooled is not None
    final_epochs = int(np.median([m["best_epoch"] for m in fold_metrics]))
    final = fit(rows, None, "final", "final model (all rows)", final_epochs)
    summary = summarize_folds([{k: v for k, v in m.items() if not isinstance(v, list)} for m in fold_metrics])
    evaluation = f"{cv}-fold cross-validation grouped by participant (out-of-fold predictions)"
    return ProtocolResult(
        final=final,
        rows=rows,
        outputs=pooled,
        metrics={
            "evaluation": evaluation,
            "monitor": fitted.result.monitor,  # the folds' (the final model has no validation set)
            "mean_std": summary,
            "folds": fold_metrics,
            "out_of_fold": score(rows, pooled),
            "final_model_epochs": final_epochs,
        },
        headline={k: v["mean"] for k, v in summary.items()},
        headline_std={k: v["std"] for k, v in summary.items()},
        history=history,
        splits=splits,
        evaluation=evaluation,
    )
