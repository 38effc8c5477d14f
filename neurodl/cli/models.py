"""``neurodl models``: the model registry, per task."""

from __future__ import annotations

from typing import Annotated

import typer

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag


def models(
    task: Annotated[
        str | None, typer.Argument(help="Only the models of this task (e.g. biomarkers).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """List the models each task can train (the names --model accepts)."""
    from rich.table import Table

    from neurodl.errors import UsageError
    from neurodl.models import list_models  # imports torch: only when the command runs

    entries = list_models(task)
    if task is not None and not entries:
        known = sorted({e.task for e in list_models()})
        raise UsageError(f"no models for task '{task}'.", f"Tasks with models: {', '.join(known)}.")
    if json_output:
        print_json([{"task": e.task, "name": e.name, "description": e.description} for e in entries])
        return
    table = Table(title="neurodl models")
    for column in ("task", "model", "description"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.task, entry.name, entry.description)
    err_console().print(table)
