"""Tables of biomarkers -> feature matrices and targets.

Encoders are fitted on training rows only and saved in the run directory, so
``predict`` applies exactly what training learnt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurodl.errors import DataError, ManifestError
from neurodl.io.tables import format_rows, require_columns

MAX_LEVELS = 20
MAX_AUTO_CLASSES = 5
_ID_NAMES = {
    "participant_id",
    "session_id",
    "subject_id",
    "subject",
    "session",
    "id",
    "rid",
    "ptid",
    "subject_key",
}
_CONTROL_NAMES = {
    "cn",
    "hc",
    "nc",
    "control",
    "controls",
    "healthy",
    "normal",
    "0",
    "no",
    "false",
    "negative",
    "neg",
}


def is_id_column(name: str) -> bool:
    """Identifier columns are never features (participant_id, *_id...)."""
    lowered = name.lower()
    return lowered in _ID_NAMES or lowered.endswith("_id")


def label_text(value: Any) -> str:
    """Canonical text of a label: 1, 1.0 and "1" are the same class."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value).strip()


def _non_numeric_rows(column: pd.Series) -> list[int]:
    """Rows holding a value that is not a number (missing values do not count)."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return []
    converted = pd.to_numeric(column, errors="coerce")
    return np.flatnonzero(column.notna().to_numpy() & converted.isna().to_numpy()).tolist()


def select_features(
    frame: pd.DataFrame,
    *,
    target: str,
    features: Sequence[str],
    exclude: Sequence[str],
    group: str | None,
    path: str | Path,
) -> tuple[list[str], list[str]]:
    """Decide the numeric and categorical feature columns.

    Default: every numeric column except the target, identifiers, the grouping
    column and ``exclude``. Named ``features`` may be categorical (strings with
    few levels, one-hot encoded); a named column that is neither raises.
    """
    require_columns(frame, [*features, *exclude], path)
    skip = {target, *(exclude or ()), *([group] if group else [])}
    numeric: list[str] = []
    categorical: list[str] = []
    if features:
        for name in features:
            if name == target:
                raise ManifestError(
                    f"{path}: '{name}' is both the target and a feature.", "Remove it from --features."
                )
            bad = _non_numeric_rows(frame[name])
            if not bad:
                numeric.append(name)
                continue
            levels = frame[name].dropna().map(label_text).unique()
            mostly_numbers = len(bad) <= 0.2 * frame[name].notna().sum()
            if len(levels) <= MAX_LEVELS and not mostly_numbers:
                categorical.append(name)
                continue
            examples = ", ".join(f"row {i + 1}: '{frame[name].iloc[i]}'" for i in bad[:3])
            raise ManifestError(
                f"{path}: column '{name}' is not numeric ({examples}) and has {len(levels)} distinct values, too many to one-hot encode.",
                f"Fix those cells (rows {format_rows(bad)}), or leave '{name}' out of --features.",
            )
    else:
        for name in frame.columns:
            if name in skip or is_id_column(name):
                continue
            is_number = pd.api.types.is_bool_dtype(frame[name]) or not _non_numeric_rows(frame[name])
            if is_number and frame[name].notna().any():
                numeric.append(name)
        if not numeric:
            raise ManifestError(
                f"{path}: no numeric feature column besides the target '{target}'. Columns: {', '.join(map(str, frame.columns))}.",
                "Name the features with --features (categorical ones are one-hot encoded).",
            )
    return numeric, categorical


@dataclass
class FeatureEncoder:
    """Standardise numeric columns, one-hot encode categorical ones, optionally impute.

    Example:
        >>> enc = FeatureEncoder.fit(train_rows, numeric=["csf_volume_ml"], categorical=["sex"])
        >>> X = enc.transform(test_rows, path="test.csv")
    """

    numeric: list[str]
    categorical: list[str]
    impute: str = "none"
    centers: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)
    levels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, *, numeric: Sequence[str], categorical: Sequence[str], impute: str = "none"
    ) -> FeatureEncoder:
        values = frame[list(numeric)].apply(pd.to_numeric, errors="coerce").astype(float)
        fill = values.median() if impute == "median" else values.mean()
        filled = values.fillna(fill)
        scales = filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
        levels = {
            name: sorted(frame[name].dropna().map(label_text).unique().tolist()) for name in categorical
        }
        return cls(
            numeric=list(numeric),
            categorical=list(categorical),
            impute=impute,
            centers=[float(v) for v in filled.mean().fillna(0.0)],
            scales=[float(v) for v in scales],
            fill=[float(v) for v in fill.fillna(0.0)],
            levels=levels,
        )

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{name}={level}" for name in self.categorical for level in self.levels[name]]

    def transform(self, frame: pd.DataFrame, *, path: str | Path) -> np.ndarray:
        """Feature matrix (float32) for ``frame``; missing values are imputed or reported."""
        require_columns(
            frame,
            self.numeric + self.categorical,
            path,
            what="feature column",
            fix="The model was trained with these features: add the missing column(s) to the table, with the same name and units.",
        )
        values = frame[self.numeric].apply(pd.to_numeric, errors="coerce").astype(float)
        for name in self.numeric:
            bad = _non_numeric_rows(frame[name])
            if bad:
                raise ManifestError(
                    f"{path}: column '{name}' has non-numeric values in rows {format_rows(bad)} (e.g. '{frame[name].iloc[bad[0]]}').",
                    "Fix those cells; write missing values as empty or n/a.",
                )
        row_missing = (
            values.isna().any(axis=1).to_numpy() | frame[self.categorical].isna().any(axis=1).to_numpy()
        )
        missing_rows = np.flatnonzero(row_missing).tolist()
        if missing_rows and self.impute == "none":
            columns = sorted({c for c in self.numeric + self.categorical if frame[c].isna().any()})
            raise DataError(
                f"{path}: missing values in rows {format_rows(missing_rows)} (columns {', '.join(columns)}).",
                "Add --impute median (or mean) to fill them from the training rows, or remove those rows.",
            )
        if self.numeric:
            values = values.fillna(pd.Series(self.fill, index=self.numeric))
            numeric = (values.to_numpy() - np.asarray(self.centers)) / np.asarray(self.scales)
        else:
            numeric = np.zeros((len(frame), 0))
        blocks = [numeric]
        for name in self.categorical:
            text = frame[name].map(lambda v: label_text(v) if pd.notna(v) else None)
            blocks.append(
                np.stack([(text == level).to_numpy(dtype=float) for level in self.levels[name]], axis=1)
            )
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureEncoder:
        return cls(**payload)


@dataclass
class TargetEncoder:
    """The target: class list (classification) or mean/scale (regression).

    For binary classification ``classes`` is ``[negative, positive]``.
    """

    column: str
    kind: str
    classes: list[str] = field(default_factory=list)
    center: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(
        cls, column: pd.Series, *, name: str, kind: str, positive: str, path: str | Path
    ) -> TargetEncoder:
        missing = [i for i, v in enumerate(column) if pd.isna(v)]
        if missing:
            raise DataError(
                f"{path}: target column '{name}' is empty in rows {format_rows(missing)}.",
                "Remove those rows (or fill in their target) before training.",
            )
        is_numeric = not _non_numeric_rows(column)
        if kind == "auto":
            numbers = pd.to_numeric(column, errors="coerce") if is_numeric else None
            few_integers = (
                numbers is not None
                and bool(np.all(np.mod(numbers, 1) == 0))
                and numbers.nunique() <= MAX_AUTO_CLASSES
            )
            kind = "classification" if not is_numeric or few_integers else "regression"
        if kind == "regression":
            if not is_numeric:
                bad = _non_numeric_rows(column)
                raise DataError(
                    f"{path}: target '{name}' is not numeric (row {bad[0] + 1}: '{column.iloc[bad[0]]}'), so it cannot be regressed.",
                    "Use --task classification, or fix the column.",
                )
            values = pd.to_numeric(column).astype(float)
            scale = float(values.std(ddof=0)) or 1.0
            return cls(column=name, kind=kind, center=float(values.mean()), scale=scale)
        labels = column.map(label_text)
        counts = labels.value_counts()
        if len(counts) < 2:
            raise DataError(
                f"{path}: target '{name}' has a single class '{counts.index[0]}' ({int(counts.iloc[0])} rows); a classifier needs at least two.",
                "Check the --target column, or add rows of the other class(es).",
            )
        if len(counts) > MAX_LEVELS:
            raise DataError(
                f"{path}: target '{name}' has {len(counts)} classes; that looks like a continuous score.",
                "Use --task regression, or bin the target first.",
            )
        classes = sorted(counts.index.tolist(), key=_class_sort_key)
        if len(classes) == 2:
            if positive:
                if positive not in classes:
                    raise DataError(
                        f"--positive '{positive}' is not a class of '{name}' (classes: {', '.join(classes)})."
                    )
                negative = classes[0] if classes[1] == positive else classes[1]
                classes = [negative, positive]
            elif classes[1].lower() in _CONTROL_NAMES and classes[0].lower() not in _CONTROL_NAMES:
                classes = [classes[1], classes[0]]
        return cls(column=name, kind="classification", classes=classes)

    @property
    def outputs(self) -> int:
        """Network outputs: 1 for regression and binary, K for K classes."""
        return 1 if self.kind == "regression" or len(self.classes) == 2 else len(self.classes)

    def encode(self, column: pd.Series, *, path: str | Path) -> np.ndarray:
        """Class indices (classification) or standardised values (regression)."""
        if self.kind == "regression":
            bad = _non_numeric_rows(column)
            if bad or column.isna().any():
                rows = bad or [i for i, v in enumerate(column) if pd.isna(v)]
                raise DataError(
                    f"{path}: target '{self.column}' is missing or not numeric in rows {format_rows(rows)}.",
                    "Fix or remove those rows.",
                )
            return np.array(
                (pd.to_numeric(column).astype(float).to_numpy() - self.center) / self.scale, dtype=np.float32
            )
        labels = column.map(lambda v: label_text(v) if pd.notna(v) else None)
        unknown = [i for i, v in enumerate(labels) if v not in self.classes]
        if unknown:
            seen = sorted({str(labels.iloc[i]) for i in unknown})
            raise DataError(
                f"{path}: target '{self.column}' has values the model was not trained on, in rows {format_rows(unknown)}: {', '.join(seen)}.",
                f"The model knows the classes {', '.join(self.classes)}; remove or relabel those rows.",
            )
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array(labels.map(lookup).to_numpy(), dtype=np.int64)

    def restore(self, standardised: np.ndarray) -> np.ndarray:
        """Regression outputs (standardised on the training rows) back in the target's own units."""
        return np.asarray(standardised, dtype=float) * self.scale + self.center

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TargetEncoder:
        return cls(**payload)


def _class_sort_key(label: str) -> tuple[int, float | str]:
    return (0, float(label)) if re.fullmatch(r"-?\d+(\.\d+)?", label) else (1, label.lower())
