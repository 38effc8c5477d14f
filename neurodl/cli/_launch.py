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
    """Run an image task's ``train`` (alone, or as one of torchrun's processes), then show what it made.

    The reporting process prints the summary table (with ``describe(summary)`` as
    its data line), the ``--json`` summary, and writes ``report.html``.
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
        report_after_training(console, summary["run"], quiet=run.quiet)
        tracking.summary = summary
