"""Starting a ``train`` command in one process, or as one of several started by torchrun."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from neurodl.cli._train_command import TrainRun


@contextlib.contextmanager
def launched(distributed: bool) -> Iterator[bool]:
    """Join torchrun's process group for the block when ``distributed``; yield whether this process reports.

    Only the reporting process (rank 0, or the only one) prints results; the
    process group is left at the end.
    """
    if not distributed:
        yield True
        return
    from neurodl.engine import distributed as group  # torch: only for a distributed run

    with group.session(os.environ) as process:
        yield process.is_main


def train_and_report(
    train: Callable[..., dict[str, Any]],
    source: Path | None,
    options: Any,
    run: TrainRun,
    *,
    describe: Callable[[dict[str, Any]], str],
) -> None:
    """Run a task's ``train`` (alone, or as one of torchrun's processes), then show what it made.

    The reporting process prints the summary table (with ``describe(summary)`` as its
    data line, then the summary's warnings), the ``--json`` summary, and writes ``report.html``.
    """
    from neurodl.cli._console import err_console, print_json
    from neurodl.cli._render import render_train_summary
    from neurodl.cli.report import report_after_training
    from neurodl.tracking import tracked  # the tracking libraries only with --track

    console = err_console()
    task = train.__module__.rsplit(".", 1)[-1]
    with tracked(options.train, run.out, task=task, console=console) as tracking:
        with launched(options.train.distributed) as reporting:
            tracking.enabled = reporting  # only the reporting process (rank 0) logs
            summary = train(
                source,
                options,
                run.out,
                resume=run.resume,
                overwrite=run.overwrite,
                console=console,
                quiet=run.quiet or not reporting,
            )
        if not reporting:
            return
        if run.json_output:
            print_json(summary)
        if not run.quiet:
            render_train_summary(console, summary, describe(summary))
            for warning in summary.get("warnings", ()):
                console.print(f"[yellow]Warning:[/yellow] {warning}")
        report_after_training(console, summary["run"], quiet=run.quiet)
        tracking.summary = summary


def trained_on_images(size: str = "", *, images: str = "images") -> Callable[[dict[str, Any]], str]:
    """The data line of an image task: ``12 images, 6 participants; resampled to (2.0, 2.0, 2.0) mm, size ...``.

    ``size`` is formatted with the summary's preprocessing (``"padded to {size}"``) and
    ends the line; a segmenter's labels (``1=csf, 2=gm``) come before the resampling.
    """

    def describe(summary: dict[str, Any]) -> str:
        pre = summary["preprocessing"]
        labels = summary.get("labels") or {}  # a segmenter's: value -> name, background 0 left out
        named = ", ".join(f"{v}={n}" for v, n in labels.items() if int(v) != 0)
        return (
            f"{summary['images']} {images}, {summary['participants']} participants; "
            + (f"labels {named}; " if labels else "")
            + f"resampled to {pre['spacing']} mm"
            + (f", {size.format(**pre)}" if size else "")
        )

    return describe
