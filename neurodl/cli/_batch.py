"""Helpers for commands that process many files: a progress bar and the failure report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from neurodl.errors import DataError, OutputError


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
