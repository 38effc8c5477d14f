"""``neurodl report`` and ``neurodl compare``: a run explained in one HTML page; runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag, QuietFlag

RunArgument = Annotated[Path, typer.Argument(help="Run directory written by a `train` command (any task).")]


def report(
    run: RunArgument,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="HTML file to write (default: RUN/report.html).", dir_okay=False),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the report in the default web browser.")
    ] = False,
    quiet: QuietFlag = False,
) -> None:
    """Write a self-contained HTML report of a run: options, data, learning curves, metrics, figures.

    One file with every image embedded (no network, no JavaScript): it can be mailed or archived.
    `train` writes RUN/report.html itself; run this again after `evaluate --out RUN/...` to include
    the new figures, or on a run whose training was interrupted.

    Example: neurodl report runs/dx --open
    """
    from neurodl.report.html import write_report  # heavy (matplotlib): only when the command runs
    from neurodl.tune.report import read_tune, write_tune_report

    # A tune directory (neurodl tune --out) gets the search's report: trials best first, plots.
    written = write_tune_report(run, out) if read_tune(run) is not None else write_report(run, out)
    if not quiet:
        err_console().print(f"Report: {written}")
    if open_browser:
        import webbrowser

        webbrowser.open(written.resolve().as_uri())


def report_after_training(console: Console, run: str | Path, *, quiet: bool) -> None:
    """Write RUN/report.html at the end of a `train`; a failure here never fails the training."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, the first process writes the run and its report
    from neurodl.errors import NeurodlError
    from neurodl.report.html import write_report  # heavy (matplotlib): only when the command runs

    try:
        written = write_report(run)
    except (NeurodlError, OSError, ValueError) as exc:
        console.print(
            f"[yellow]Warning:[/yellow] the run is complete, but its report could not be written ({exc}); "
            f"retry with `neurodl report {run}`."
        )
        return
    if not quiet:
        console.print(f"Report: {written}")


def _comparison_table(comparison: Any, width: int) -> Table:
    """One row per run; one column per run instead when that is too wide for the terminal."""
    from neurodl.report.compare import compared_options, option_text
    from neurodl.report.summary import format_value

    best = comparison.best(comparison.metric) if comparison.metric else None
    fields: list[tuple[str, list[str], bool]] = [
        (
            "run",
            [
                label if run.finished else f"{label} (unfinished)"
                for run, label in zip(comparison.runs, comparison.labels, strict=True)
            ],
            False,
        ),
        ("task", [run.task for run in comparison.runs], False),
        ("model", [run.model for run in comparison.runs], False),
    ]
    fields += [
        (name, [option_text(name, compared_options(run).get(name)) for run in comparison.runs], False)
        for name in comparison.options
    ]
    fields += [
        (
            "best epoch",
            [str(r.best_epoch) if r.best_epoch is not None else "—" for r in comparison.runs],
            False,
        ),
        (
            "epochs run",
            [str(r.epochs_run) if r.epochs_run is not None else "—" for r in comparison.runs],
            False,
        ),
    ]
    for metric in comparison.metrics:
        cells = []
        for i, run in enumerate(comparison.runs):
            value, std = comparison.value(i, metric)
            text = "—" if metric not in run.headline()[0] else format_value(value, std)
            cells.append(f"[green]{text}[/green]" if i == best and metric == comparison.metric else text)
        fields.append((metric, cells, metric == comparison.metric))
    title = f"{len(comparison.runs)} runs" + (
        f", best {comparison.metric} first" if comparison.metric else ""
    )
    natural = sum(
        max(len(name), *(Text.from_markup(c).cell_len for c in cells)) + 3 for name, cells, _ in fields
    )
    if natural <= width:
        table = Table(title=title)
        for name, _, chosen in fields:
            numeric = name not in ("run", "task", "model") and name not in comparison.options
            table.add_column(
                name,
                justify="right" if numeric else "left",
                style="bold" if chosen else None,
                header_style="bold magenta" if chosen else None,
            )
        for i in range(len(comparison.runs)):
            table.add_row(*[cells[i] for _, cells, _ in fields])
        return table
    table = Table(title=title)
    table.add_column("", style="bold")
    for cell in fields[0][1]:
        table.add_column(cell, justify="right", overflow="fold")
    for name, cells, chosen in fields[1:]:
        table.add_row(
            f"[magenta]{name}[/magenta]" if chosen else name, *cells, style="bold" if chosen else None
        )
    return table


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (any task; finished or not).")],
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="Sort the runs by this metric (best first) and highlight it."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a bar chart of --metric (or the first shared metric): .png, .svg or .pdf.",
            dir_okay=False,
        ),
    ] = None,
    curves: Annotated[
        Path | None,
        typer.Option(
            "--curves",
            help="Write the learning curves of every run in one figure (validation loss solid, training dashed).",
            dir_okay=False,
        ),
    ] = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Compare runs: the options that differ, best epoch, epochs and headline metrics, one row per run.

    The metrics are those `train` printed: held-out test metrics if the run has a test set, else
    the mean ± sd over cross-validation folds, else the validation metrics at the best epoch.

    Example: neurodl compare runs/lr-small runs/lr-large --metric rmse --curves lr.png
    """
    from neurodl.errors import UsageError
    from neurodl.report import compare as comparing  # heavy (matplotlib): only when the command runs

    comparison = comparing.compare_runs(runs, metric)
    for path in (plot, curves):
        if path is not None:
            comparing.check_figure_path(path, comparison)
    console = err_console()
    if json_output:
        print_json(
            {
                "metric": comparison.metric,
                "options": comparison.options,
                "metrics": comparison.metrics,
                "runs": comparison.records(),
            }
        )
    if not quiet:
        console.print(_comparison_table(comparison, console.width))
    if plot is not None:
        chosen = comparison.metric or comparison.shared_metric()
        if chosen is None:
            raise UsageError(
                "no metric to plot: none of these runs has finished training.",
                "Compare finished runs, or leave out --plot.",
            )
        comparing.save_figure(comparing.metric_bar_chart(comparison, chosen), plot)
        if not quiet:
            console.print(f"Bar chart of {chosen}: {plot}")
    if curves is not None:
        comparing.save_figure(comparing.learning_curves_overlay(comparison, comparison.metric), curves)
        if not quiet:
            console.print(f"Learning curves: {curves}")
