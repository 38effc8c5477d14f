"""Comparing runs: one table of options and metrics, a bar chart, overlaid learning curves.

Runs of different tasks can be compared: a metric or option a run lacks is left empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodl.config import lower_is_better
from neurodl.errors import OutputError, UsageError
from neurodl.io.atomic import atomic_output
from neurodl.report.summary import RunSummary, format_value, summarize_run

# Options people vary to compare runs, shown first (in this order) when they differ.
KEY_OPTIONS = (
    "target",
    "features",
    "hidden",
    "activation",
    "dropout",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "epochs",
    "scheduler",
    "patience",
    "cv",
    "latent_dim",
    "beta",
    "width",
    "depth",
    "seed",
)
# Never columns: the model has its own, the rest say where data came from or how it was loaded.
_NOT_COMPARED = frozenset({"model", "workers", "cache", "input_sha256", "label", "mask"})
FIGURE_FORMATS = (".png", ".svg", ".pdf")


def option_text(name: str, value: Any) -> str:
    """An option value as typed on the command line (``64,32``, ``none``, ``all``)."""
    if value is None:
        return "—"
    if name == "batch_size" and value == 0:
        return "all"
    if name == "input":
        return Path(str(value)).name
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    return format_value(value)


def compared_options(run: RunSummary) -> dict[str, Any]:
    """A run's options, with what it predicts under one name (``target``) whatever the task calls it."""
    options = run.options
    if run.target:
        options["target"] = run.target
    if options.get("hidden") in ([], ()):
        # Linear or logistic regression: no hidden layer for an activation or dropout to act on.
        options["activation"] = options["dropout"] = None
    return options


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, with as many parent folders as it takes to tell them apart."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1


@dataclass
class Comparison:
    """Runs side by side.

    Attributes:
        runs: the runs, sorted by ``metric`` (best first) when one was chosen.
        labels: a short, unique name per run (its folder name).
        options: names of the options whose values differ between the runs (key options first).
        metrics: every headline metric of any run, in the order the runs report them.
        metric: the metric the runs are sorted by, or None.
    """

    runs: list[RunSummary]
    labels: list[str]
    options: list[str]
    metrics: list[str]
    metric: str | None = None

    def value(self, index: int, metric: str) -> tuple[float | None, float | None]:
        """A run's value of ``metric`` and its standard deviation over folds (None when absent)."""
        values, stds = self.runs[index].headline()
        return values.get(metric), stds.get(metric)

    def best(self, metric: str) -> int | None:
        """Index of the run with the best value of ``metric``."""
        scored = [
            (v, i)
            for i in range(len(self.runs))
            if (v := self.value(i, metric)[0]) is not None and math.isfinite(v)
        ]
        if not scored:
            return None
        return (min if lower_is_better(metric) else max)(scored)[1]

    def shared_metric(self) -> str | None:
        """The first metric every run has, or the first metric any run has."""
        for metric in self.metrics:
            if all(self.value(i, metric)[0] is not None for i in range(len(self.runs))):
                return metric
        return self.metrics[0] if self.metrics else None

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready mapping per run (absent values are null)."""
        rows = []
        for i, (run, label) in enumerate(zip(self.runs, self.labels, strict=True)):
            values, stds = run.headline()
            options = compared_options(run)
            rows.append(
                {
                    "run": str(run.path),
                    "label": label,
                    "task": run.task,
                    "model": run.model,
                    "finished": run.finished,
                    "options": {name: options.get(name) for name in self.options},
                    "best_epoch": run.best_epoch,
                    "epochs_run": run.epochs_run,
                    "evaluation": run.evaluation,
                    "metrics": {m: values.get(m) for m in self.metrics},
                    "metrics_std": {m: stds[m] for m in self.metrics if stds.get(m) is not None},
                    "best": self.metric is not None and self.best(self.metric) == i,
                }
            )
        return rows


def compare_runs(paths: Sequence[str | Path], metric: str | None = None) -> Comparison:
    """Read the runs and line them up.

    Args:
        paths: run directories (any task; finished or not).
        metric: sort by this headline metric, best first (higher is better, except for losses and errors).

    Raises:
        RunDirectoryError: a path is not a run directory.
        UsageError: ``metric`` is not a metric of any run (the message lists those that are).

    Example:
        >>> comparison = compare_runs(["runs/lr-small", "runs/lr-large"], metric="rmse")
        >>> comparison.labels
        ['lr-small', 'lr-large']
    """
    if not paths:
        raise UsageError("no run directories given.", "Name one or more run directories (--out of `train`).")
    from neurodl.tune.report import read_tune, trial_runs

    # A tune directory stands for its trials' runs, best first.
    paths = [run for p in paths for run in (trial_runs(p) if read_tune(p) is not None else [Path(p)])]
    runs = [summarize_run(p) for p in paths]
    metrics: list[str] = []
    for run in runs:
        metrics += [m for m in run.headline()[0] if m not in metrics]
    options_per_run = [compared_options(run) for run in runs]
    names = {name for options in options_per_run for name in options} - _NOT_COMPARED
    # An option of one task only (e.g. --latent-dim next to a biomarkers run) is noise, unless it is a key one.
    differing = {
        name
        for name in names
        if len(
            {
                option_text(name, options.get(name))
                for options in options_per_run
                if name in KEY_OPTIONS or name in options
            }
        )
        > 1
    }
    if len(runs) == 1:
        differing = {name for name in KEY_OPTIONS if name in names}
    ordered = [n for n in KEY_OPTIONS if n in differing] + sorted(differing - set(KEY_OPTIONS))
    comparison = Comparison(runs, _labels([r.path for r in runs]), ordered, metrics)
    if metric is not None:
        if metric not in metrics:
            raise UsageError(
                f"no metric '{metric}' in {'this run' if len(runs) == 1 else 'these runs'}.",
                f"Available metrics: {', '.join(metrics) or 'none (no run has finished training)'}.",
            )
        comparison.metric = metric
        order = sorted(
            range(len(runs)),
            key=lambda i: _sort_key(comparison.value(i, metric)[0], lower_is_better(metric)),
        )
        comparison.runs = [runs[i] for i in order]
        comparison.labels = [comparison.labels[i] for i in order]
    return comparison


def _sort_key(value: float | None, ascending: bool) -> tuple[int, float]:
    if value is None or not math.isfinite(value):
        return (1, 0.0)
    return (0, value if ascending else -value)


# -- figures ------------------------------------------------------------------------------------


def check_figure_path(path: Path, comparison: Comparison) -> None:
    """Refuse an unknown image format, or a file that belongs to one of the runs."""
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise UsageError(
            f"{path}: cannot tell the image format from the name.",
            f"End the file name with {', '.join(FIGURE_FORMATS)}.",
        )
    target = path.resolve()
    for run in comparison.runs:
        if run.path.resolve() in target.parents:
            raise OutputError(
                f"{path}: lies inside the run directory {run.path}; a comparison would mix with its own files.",
                "Write the figure outside the run directories.",
            )


def save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure atomically (format from the file name) and close it."""
    import matplotlib.pyplot as plt  # heavy: only when a figure is written

    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lower().lstrip("."))
    plt.close(figure)
    return path


def metric_bar_chart(comparison: Comparison, metric: str) -> Any:
    """One bar per run (± the standard deviation over folds); the best run's bar is highlighted."""
    from neurodl.report.plots import plt

    values = [comparison.value(i, metric) for i in range(len(comparison.runs))]
    best = comparison.best(metric)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(values)), 4))
    heights = [v if v is not None and math.isfinite(v) else 0.0 for v, _ in values]
    errors = [s if s is not None and math.isfinite(s) else 0.0 for _, s in values]
    colours = ["#d95f02" if i == best else "#7570b3" for i in range(len(values))]
    bars = ax.bar(
        range(len(values)), heights, yerr=errors if any(errors) else None, color=colours, capsize=4, alpha=0.9
    )
    for bar, (value, std) in zip(bars, values, strict=True):
        text = format_value(value, std) if value is not None else "—"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(values)), comparison.labels)
    if max((len(label) for label in comparison.labels), default=0) * len(values) > 60:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    direction = "lower is better" if lower_is_better(metric) else "higher is better"
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({direction})")
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def _per_epoch(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Values of ``key`` per epoch; with folds, the mean over the folds that reached each epoch."""
    by_epoch: dict[int, list[float]] = {}
    final = [r for r in history if "fold" not in r]
    for record in final or history:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(float(value)):
            by_epoch.setdefault(int(record.get("epoch", 0)), []).append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def _wide_range(values: list[float]) -> bool:
    """Log scale when the values are positive and span more than two decades."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) / min(positive) > 100


def curves_metric(comparison: Comparison, metric: str | None) -> str | None:
    """The history column of the second panel: ``metric``'s validation curve, else a shared non-loss monitor."""
    columns = {key for run in comparison.runs for record in run.history for key in record}
    if metric is not None:
        for candidate in (f"val_{metric}", metric):
            if candidate in columns:
                return candidate
    monitors = {run.monitor for run in comparison.runs}
    if len(monitors) == 1 and (monitor := monitors.pop()) in columns and "loss" not in monitor:
        return monitor
    return None


def learning_curves_overlay(comparison: Comparison, metric: str | None = None) -> Any:
    """Loss per epoch, one colour per run: validation solid, training dashed; dots at the best epoch.

    A second panel shows the validation curve of ``metric`` (or of the runs' shared,
    non-loss monitor) when the runs recorded one. Runs with folds show the mean over folds.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from neurodl.report.plots import plt

    second = curves_metric(comparison, metric)
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(12 if second else 7, 4.6), squeeze=False)
    loss_ax = axes[0, 0]
    palette = plt.get_cmap("tab10")
    plotted: list[float] = []
    second_values: list[float] = []
    handles = []
    for i, (run, label) in enumerate(zip(comparison.runs, comparison.labels, strict=True)):
        colour = palette(i % 10)
        tag = f"{label} (mean of {run.folds} folds)" if run.folds > 1 else label
        if not run.history:
            handles.append(Line2D([], [], color=colour, label=f"{tag}: no history"))
            continue
        epochs, val = _per_epoch(run.history, "val_loss")
        train_epochs, train = _per_epoch(run.history, "train_loss")
        if val:
            loss_ax.plot(epochs, val, "-", color=colour, lw=1.8)
        if train:
            loss_ax.plot(train_epochs, train, "--", color=colour, lw=1.2, alpha=0.8)
        plotted += val + train
        best = run.best_epoch if run.folds <= 1 else None
        if best is not None and best in epochs:
            loss_ax.plot([best], [val[epochs.index(best)]], "o", color=colour, ms=5)
        handles.append(Line2D([], [], color=colour, lw=1.8, label=tag))
        if second:
            metric_epochs, metric_values = _per_epoch(run.history, second)
            axes[0, 1].plot(metric_epochs, metric_values, "-", color=colour, lw=1.8)
            second_values += metric_values
    if _wide_range(plotted):
        loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss" + (" (log scale)" if _wide_range(plotted) else ""))
    loss_ax.set_title("Loss per epoch")
    loss_ax.grid(alpha=0.3)
    style = [
        Line2D([], [], color="grey", lw=1.8, label="validation"),
        Line2D([], [], color="grey", lw=1.2, ls="--", label="training"),
        Line2D([], [], color="grey", marker="o", ls="", label="best epoch"),
    ]
    loss_ax.legend(handles=handles + style, fontsize=8, loc="best", framealpha=0.85)
    if second:
        axes[0, 1].set_xlabel("epoch")
        log_scale = _wide_range(second_values)
        if log_scale:
            axes[0, 1].set_yscale("log")
        axes[0, 1].set_ylabel(second + (" (log scale)" if log_scale else ""))
        axes[0, 1].set_title(f"Validation {second.removeprefix('val_')} per epoch")
        axes[0, 1].grid(alpha=0.3)
    for ax in axes[0]:
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
