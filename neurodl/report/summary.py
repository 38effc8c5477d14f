"""What a run directory says about itself, read once for reports and comparisons.

Works for a run of any task (including tasks this module has never heard of)
and for a run whose training did not finish: every file is optional except
``config.json``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurodl.config import lower_is_better
from neurodl.errors import NeurodlError
from neurodl.io.rundir import RunDirectory

log = logging.getLogger(__name__)

# Counts and bookkeeping that sit next to metrics in metrics.json but are not scores.
NOT_METRICS = frozenset({"participants", "images", "rows", "best_epoch", "confusion_matrix", "epochs"})
# The default --monitor of tasks whose default is not the validation loss, for runs written before
# metrics.json recorded the monitor it used.
_DEFAULT_MONITOR = {"segment": "val_dice", "translate": "val_mae"}
# Options that record where a run came from, not how it was trained.
_HIDDEN_OPTIONS = frozenset({"input_sha256"})


def format_value(value: Any, std: Any = None) -> str:
    """A number for people: ``0.912``, ``1.2e-05``, ``0.912 ± 0.031``; ``n/a`` when undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value) if value else "none"
        return str(value)
    if isinstance(value, int):
        text = str(value)
    elif value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        text = f"{value:.3g}"
    else:
        text = f"{value:.3f}"
    if isinstance(std, int | float) and not isinstance(std, bool) and math.isfinite(std):
        text += f" ± {format_value(float(std))}"
    return text


def scalar_metrics(values: dict[str, Any]) -> dict[str, float | None]:
    """The scores in a metrics mapping: numbers and undefined values (null), not counts or matrices."""
    return {
        k: (float(v) if v is not None else None)
        for k, v in values.items()
        if k not in NOT_METRICS and (v is None or (isinstance(v, int | float) and not isinstance(v, bool)))
    }


def flatten_options(options: dict[str, Any]) -> dict[str, Any]:
    """One level of names: nested groups (``train``, ``images``) are merged into the top level.

    A nested name that clashes with a top-level one keeps its group as a prefix (``train.epochs``).
    """
    flat: dict[str, Any] = {}
    nested: list[tuple[str, dict[str, Any]]] = []
    for key, value in options.items():
        if key in _HIDDEN_OPTIONS:
            continue
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            flat[key] = value
    for group, values in nested:
        for key, value in flatten_options(values).items():
            flat[f"{group}.{key}" if key in flat else key] = value
    return flat


def _number(text: str) -> float | int | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_history_csv(path: Path) -> list[dict[str, Any]]:
    """``history.csv`` as a list of records (numbers parsed; ``inf``/``nan`` kept as floats)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {k: _number(v) for k, v in row.items() if k is not None and v not in (None, "")}
            for row in csv.DictReader(handle)
        ]


@dataclass
class RunSummary:
    """The files of one run directory, parsed.

    Example:
        >>> summary = summarize_run("runs/dx")
        >>> summary.headline()
        ({'accuracy': 0.875, ...}, {})
    """

    path: Path
    task: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    splits: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    history_source: str = ""

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def finished(self) -> bool:
        """Training wrote its metrics (the last thing a ``train`` writes before the plots)."""
        return self.metrics is not None

    @property
    def options(self) -> dict[str, Any]:
        """The resolved options, flattened (``lr``, not ``train.lr``)."""
        return flatten_options(dict(self.config.get("options") or {}))

    @property
    def model(self) -> str:
        spec = (self.preprocessing or {}).get("model")
        if isinstance(spec, dict) and spec.get("name"):
            return str(spec["name"])
        return str(self.options.get("model", "")) or "—"

    @property
    def target(self) -> str:
        """The column the run predicts (target, label, mask...), or ''."""
        options = self.options
        for key in ("target", "label", "mask"):
            if options.get(key):
                return str(options[key])
        return ""

    @property
    def classes(self) -> list[str]:
        for key in ("label", "target"):
            spec = (self.preprocessing or {}).get(key)
            if isinstance(spec, dict) and spec.get("classes"):
                return [str(c) for c in spec["classes"]]
        return []

    @property
    def monitor(self) -> str:
        chosen = str(self.options.get("monitor", "auto"))
        if chosen != "auto":
            return chosen
        recorded = (self.metrics or {}).get("monitor")
        return recorded if isinstance(recorded, str) else _DEFAULT_MONITOR.get(self.task, "val_loss")

    @property
    def evaluation(self) -> str:
        return str((self.metrics or {}).get("evaluation", ""))

    @property
    def folds(self) -> int:
        return len({int(r["fold"]) for r in self.history if "fold" in r})

    def headline(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """The metrics a ``train`` prints at the end, and their standard deviation over folds.

        Held-out test metrics when there is a test set; else the mean over
        cross-validation folds; else the validation metrics at the best epoch.
        """
        metrics = self.metrics or {}
        if isinstance(metrics.get("test"), dict):
            return scalar_metrics(metrics["test"]), {}
        summary = metrics.get("mean_std")
        if isinstance(summary, dict):
            means = {k: v.get("mean") for k, v in summary.items() if isinstance(v, dict)}
            stds = {k: v.get("std") for k, v in summary.items() if isinstance(v, dict)}
            kept = scalar_metrics(means)
            return kept, {k: stds.get(k) for k in kept}
        if isinstance(metrics.get("validation"), dict):
            return scalar_metrics(metrics["validation"]), {}
        return scalar_metrics(metrics), {}

    @property
    def epochs_run(self) -> int | None:
        """Epochs of the final model (for ``--cv``, the final fit on every row)."""
        metrics = self.metrics or {}
        if isinstance(metrics.get("final_model_epochs"), int):
            return int(metrics["final_model_epochs"])
        final = [r for r in self.history if "fold" not in r]
        return len(final) if final else None

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights the model keeps (for ``--cv``: the final fit's last epoch)."""
        metrics = self.metrics or {}
        if isinstance(metrics.get("best_epoch"), int):
            return int(metrics["best_epoch"])
        if isinstance(metrics.get("final_model_epochs"), int):
            return int(metrics["final_model_epochs"])
        final = [r for r in self.history if "fold" not in r]
        monitor = self.monitor if final and self.monitor in final[0] else "train_loss"
        values = [
            (float(r[monitor]), int(r.get("epoch", i + 1)))
            for i, r in enumerate(final)
            if isinstance(r.get(monitor), int | float) and math.isfinite(float(r[monitor]))
        ]
        if not values:
            return None
        pick = min if lower_is_better(monitor) else max
        return pick(values, key=lambda pair: pair[0])[1]


def _history_from_checkpoints(run: RunDirectory) -> list[dict[str, Any]]:
    """The per-epoch history saved in the checkpoints of a run that did not finish."""
    files = sorted(run.file("checkpoints").glob("*.safetensors"))
    if not files:
        return []
    from neurodl.io.state import load_state  # torch-heavy: only for runs without history.csv

    folds = {int(f.stem[5:]): f for f in files if f.stem.startswith("fold-") and f.stem[5:].isdigit()}
    history: list[dict[str, Any]] = []
    for fold, file in sorted(folds.items()):
        try:
            records = load_state(file).get("history") or []
        except NeurodlError as exc:
            log.debug("skipping %s: %s", file, exc)
            continue
        history += [{"fold": fold, **dict(r)} for r in records]
    final = run.file("checkpoints/final.safetensors")
    if not history and final.exists():
        try:
            history = [dict(r) for r in load_state(final).get("history") or []]
        except NeurodlError as exc:
            log.debug("skipping %s: %s", final, exc)
    return history


def summarize_run(path: str | Path) -> RunSummary:
    """Read a run directory of any task.

    Raises:
        RunDirectoryError: the folder is missing, not a run directory, damaged or from a newer neurodl.
    """
    run = RunDirectory.open(path)
    summary = RunSummary(path=Path(path), task=run.task, config=run.config)
    for name, attribute in (
        ("metrics.json", "metrics"),
        ("preprocessing.json", "preprocessing"),
        ("splits.json", "splits"),
    ):
        if run.exists(name):
            value = run.read_json(name)
            setattr(summary, attribute, value if isinstance(value, dict) else None)
    if run.exists("history.csv"):
        summary.history = read_history_csv(run.file("history.csv"))
        summary.history_source = "history.csv"
    else:
        summary.history = _history_from_checkpoints(run)
        summary.history_source = "checkpoints" if summary.history else ""
    return summary
