"""Helpers for commands that process many files: the model at work, a progress bar, what was written, failures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neurodl.cli._console import err_console, print_json
from neurodl.cli._render import counted, metrics_table, show_metrics
from neurodl.errors import DataError, OutputError

if TYPE_CHECKING:
    from neurodl.cli._model_command import Evaluation, ModelRun


@contextlib.contextmanager
def at_work(
    task: Any, run: ModelRun, action: str, **load: Any
) -> Iterator[tuple[Any, Callable[[Any], None]]]:
    """Yield ``task``'s model loaded for ``run`` (``task.load`` with ``load``) and the callback of a progress bar.

    ``task`` is a module of :mod:`neurodl.tasks`; ``action`` names what the bar counts.
    """
    loaded = task.load(run.model, device=run.device, **load)
    with file_progress(err_console(), action, quiet=run.quiet) as advance:
        yield loaded, advance


@contextlib.contextmanager
def file_progress(
    console: Console, description: str, *, quiet: bool = False
) -> Iterator[Callable[[Any], None]]:
    """Yield a callback to call once per processed input; draws a bar with an ETA."""
    if quiet:
        yield lambda _item: None
        return
    with Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[name]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None, name="")
        yield lambda item: bar.update(task, advance=1, name=getattr(item, "name", ""))


def report_failures(console: Console, failures: Sequence[Any], total: int, *, report: bool = False) -> None:
    """Print every failed input; raise (exit 2) if any failed, after the good ones were written.

    With ``report`` (an ``evaluate --out``), say that no report was written: metrics that
    leave inputs out would pass for the evaluation that was asked for.
    """
    if not failures:
        return
    for failure in failures:
        console.print(f"[red]Failed:[/red] {failure.name}: {failure.message}", soft_wrap=True)
    raise DataError(
        f"{len(failures)} of {total} inputs failed (listed above); the others were processed.",
        "Fix or remove the failed inputs and run again "
        + ("(no report was written)." if report else "(outputs already written are kept)."),
    )


def check_output_file(output: Path | None, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output that is one of the inputs, or that exists without --overwrite."""
    if output is None:
        return
    if any(output.resolve() == p.resolve() for p in inputs):
        raise OutputError(
            f"{output}: is also an input; neurodl never overwrites its inputs.",
            "Choose another -o/--output path.",
        )
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists.", "Choose another path, or add --overwrite.")


def kept(table: Any) -> int:
    """How many rows of a batch's table are outputs that already existed (status other than written)."""
    return int((table["status"] != "written").sum()) if len(table) else 0


def report_written(
    run: ModelRun,
    records: list[dict[str, Any]],
    failures: Sequence[Any],
    *,
    kept: int,
    noun: str,
    out: Path,
    also: str = "",
) -> None:
    """After a batch that writes a file per input: the records (--json), how many were written, the failures.

    ``kept`` of the ``records`` were there already; ``noun`` names one output (``mask``); ``also``
    ends the line, which a batch's log keeps with --quiet too (like every "written to" line).
    """
    console = err_console()
    if run.json_output:
        print_json(records)
    more = f"; {kept} existing kept (--overwrite to redo)" if kept else ""
    console.print(f"{counted(len(records) - kept, noun)} written to {out}{more}{also}")
    report_failures(console, failures, len(records) + len(failures))


def show_made(run: ModelRun, table: Any, summary: str) -> None:
    """After a command that makes images from a model: its table (--json), and ``summary`` (what it wrote)."""
    if run.json_output:
        print_json(table.to_dict(orient="records"))
    err_console().print(summary)


def write_table(table: Any, output: Path | None, summary: str) -> None:
    """Write a pandas table as CSV on stdout, or to ``output`` (TSV for a .tsv name) and say ``summary`` written."""
    import sys

    from neurodl.io.atomic import atomic_output

    if output is None:
        table.to_csv(sys.stdout, index=False)
        return
    with atomic_output(output) as tmp:
        table.to_csv(tmp, index=False, sep="\t" if output.suffix.lower() == ".tsv" else ",")
    if summary:
        err_console().print(f"{summary} written to {output}")


def evaluate_images(
    task: Any, run: Evaluation, scored: Callable[[Any], str], *, saved: str, note: str = "", **options: Any
) -> None:
    """An image task's ``evaluate``: score the model on the manifest, show the metrics, report the failures.

    ``task.evaluate`` is given ``options`` besides the shared flags; the table's title
    names ``scored(loaded)`` (and ``note``); ``saved`` says what ``--out`` holds.
    """
    with at_work(task, run, "evaluating") as (loaded, advance):
        metrics, *_, failures, warnings = task.evaluate(  # classify's has no per-image table in between
            loaded,
            run.manifest,
            allow_overlap=run.allow_overlap,
            bids_filter=run.bids_filter or (),
            report_dir=run.out,
            overwrite=run.overwrite,
            on_image=advance,
            **options,
        )
    table = metrics_table(
        f"{scored(loaded)} on {run.manifest.name} ({metrics['images']} images{note})", metrics
    )
    console = err_console()
    show_metrics(console, run, metrics, warnings, table, saved="" if failures else saved, out=run.out)
    report_failures(console, failures, metrics["images"] + len(failures), report=run.out is not None)
