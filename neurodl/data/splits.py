"""Splits that keep each participant on one side: grouped, stratified, k-fold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurodl.errors import DataError


def regression_strata(values: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bins of a continuous target, so folds see its whole range."""
    bins = max(1, min(bins, len(np.unique(values))))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right")


def _check(groups: np.ndarray, strata: np.ndarray, k: int, what: str) -> None:
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(
            f"{what} needs at least {k} participants, but the table has {n_groups}.",
            "Use fewer folds (--cv) or add participants.",
        )


def kfold_by_participant(
    groups: Sequence[str] | np.ndarray, strata: Sequence[int] | np.ndarray, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds of (train rows, test rows), stratified on ``strata``, never splitting a participant.

    Example:
        >>> folds = kfold_by_participant(frame.participant_id, labels, k=5)
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups_arr = np.asarray(groups).astype(str)
    strata_arr = np.asarray(strata)
    _check(groups_arr, strata_arr, k, f"{k}-fold cross-validation")
    index = np.arange(len(groups_arr))
    _, counts = np.unique(strata_arr, return_counts=True)
    splitter = (
        StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        if counts.min() >= k
        else GroupKFold(n_splits=k)
    )
    folds = [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(index, strata_arr, groups_arr)]
    return folds


def split_by_participant(
    groups: Sequence[str] | np.ndarray, strata: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One (train rows, held-out rows) split with about ``fraction`` of participants held out.

    With fewer participants than ``1 / fraction``, one participant is held out.
    """
    n_groups = len(np.unique(np.asarray(groups).astype(str)))
    if n_groups < 2:
        raise DataError(
            f"holding out participants for validation or testing needs at least 2 participants, but there is {n_groups}.",
            "Add participants: a model cannot be validated on the participants it was trained on.",
        )
    k = min(max(2, round(1 / fraction)), n_groups)
    train, held = kfold_by_participant(groups, strata, k, seed)[0]
    return train, held
