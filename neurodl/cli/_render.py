"""Rendering results for people (stderr): metric tables and run summaries."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from neurodl.cli._console import print_json

if TYPE_CHECKING:
    from neurodl.cli._model_command import ModelRun

_SKIP = ("confusion_matrix", "rows", "images", "best_epoch", "units")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 map``, ``2 maps``, ``0 maps`` (``plural`` for irregular nouns)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_metric(value: Any, std: Any = None) -> str:
    """``0.912 ± 0.031``, or ``n/a`` for a missing or undefined value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{text} ± {std:.3f}" if isinstance(std, float) and not math.isnan(std) else text


def metrics_table(title: str, metrics: dict[str, Any], stds: dict[str, Any] | None = None) -> Table:
    """A two-column table of scalar metrics (mean ± std when ``stds`` are given)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key in _SKIP or isinstance(value, list | dict):
            continue
        table.add_row(key, format_metric(value, (stds or {}).get(key)))
    return table


def render_train_summary(console: Console, summary: dict[str, Any], data_line: str) -> None:
    """The end-of-training report: metrics, what was trained on, where the run is."""
    console.print(
        metrics_table(
            f"{summary['target']} ({summary['task']}, {summary['model']})",
            summary["metrics"],
            summary.get("metrics_std"),
        )
    )
    console.print(data_line)
    console.print(f"Evaluation: {summary['evaluation']}")
    console.print(
        f"Run written to [bold]{summary['run']}[/bold] ({summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'} for the final model)."
    )


def show_metrics(
    console: Console,
    run: ModelRun,
    metrics: dict[str, Any],
    warnings: list[str],
    table: Table,
    *,
    saved: str,
    out: Path | None,
) -> None:
    """An ``evaluate``'s result: its warnings, the ``metrics`` (--json on stdout) and their ``table``.

    Then, with ``out`` and a ``saved`` (what the report holds), where the report was written.
    """
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if run.json_output:
        print_json(metrics)
    if run.quiet:
        return
    console.print(table)
    if out is not None and saved:
        console.print(f"{saved} written to {out}")
