"""``neurodl check``: validate a manifest and its images before training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag, QuietFlag, column_option

if TYPE_CHECKING:
    from neurodl.data.validation import CheckReport, Problem

# Beyond this many, problems and warnings are counted on stderr and listed in full by --json.
_SHOWN = 50

ManifestArgument = Annotated[
    Path,
    typer.Argument(
        help="CSV/TSV manifest, one row per image (image paths relative to its folder), or a BIDS "
        "dataset root (--image then names a suffix, e.g. T1w).",
        metavar="MANIFEST",
        show_default=False,
    ),
]
BidsFilterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--bids-filter",
        help="With a BIDS dataset root: keep the images whose entity has this value (acq=mprage, "
        "ses=01); repeat for several.",
        metavar="ENTITY=VALUE",
        show_default=False,
    ),
]
ParticipantOption = Annotated[
    str,
    typer.Option(
        "--participant",
        help="Participant column; splits keep its rows together. Without it, the sub-XXX in "
        "file names is used, else each row is its own participant.",
        metavar="COLUMN",
    ),
]


def check(
    manifest: ManifestArgument,
    image: list[str] | None = column_option(
        "--image",
        "-i",
        help="Image column; repeat for several channels. Default: every column of .nii/.nii.gz paths.",
    ),
    label: str | None = column_option(
        "--label", "-l", help="Label column: classes, a continuous target, or segmentation mask paths."
    ),
    participant: ParticipantOption = "participant_id",
    bids_filter: BidsFilterOption = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Check a dataset before training: files, shapes, grids, values, labels, participants.

    Opens every image and lists every problem in one pass; exits with status 2 if there is any.
    Warnings and notes do not fail the check.
    """
    # pandas, nibabel and numpy load only when the command runs: `neurodl --help` stays instant.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TimeRemainingColumn,
    )

    from neurodl.data.validation import check_manifest
    from neurodl.errors import DataError
    from neurodl.io.manifest import load_manifest

    console = err_console()
    loaded = load_manifest(
        manifest,
        image or None,
        label,
        participant,
        require_files=False,
        bids_filter=bids_filter or (),
        drop_unpaired=True,  # a BIDS image without its T2w (or mask) is left out, as training does
    )
    for warning in loaded.warnings:  # what a BIDS dataset's resolution left out
        console.print(Text("Warning: ", style="bold yellow") + Text(warning))
    if not quiet:
        how = " (every column of NIfTI paths; choose with --image)"
        console.print(
            f"Image columns: {', '.join(loaded.image_columns)}"
            + (how if loaded.image_columns_detected else "")
        )

    columns: list[str | ProgressColumn] = [
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("Reading images", total=None)
        report = check_manifest(
            loaded,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )

    if not quiet:
        console.print(_summary(report))
        for note in report.notes:
            console.print(Text("Note: ", style="bold cyan") + Text(note))
    _print_problems(console, report.warnings, "Warning", "bold yellow", report.root)
    _print_problems(console, report.problems, "Problem", "bold red", report.root)
    if json_output:
        print_json(report.to_dict())
    if report.problems:
        n = len(report.problems)
        raise DataError(
            f"{manifest}: {n} problem{'s' if n > 1 else ''} found in {report.rows} "
            f"row{'s' if report.rows > 1 else ''} (listed above).",
            "Fix each one and run `neurodl check` again.",
        )
    if not quiet:
        console.print(
            Text("OK: ", style="bold green")
            + Text(f"{report.rows} rows, {report.images_read} images, ready for training.")
        )


def _summary(report: CheckReport) -> Table:
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("Manifest", report.manifest)
    table.add_row("Rows", str(report.rows))
    source = {
        "column": f"column '{report.participant_column}'",
        "filename": "sub-XXX in file names",
        "row": "one per row",
    }[report.participant_source]
    table.add_row("Participants", f"{report.participants} ({source})")
    table.add_row("Images read", f"{report.images_read} of {report.images}")
    table.add_row("Shapes", _counts(report.shapes))
    table.add_row("Voxel sizes (mm)", _counts(report.spacings))
    table.add_row("Orientations", _counts(report.orientations))
    table.add_row("Dtypes", _counts(report.dtypes))
    if report.label_column is not None:
        table.add_row(f"Label '{report.label_column}'", _labels(report))
    return table


def _labels(report: CheckReport) -> str:
    if report.label_kind == "classes":
        return _counts(report.label_counts)
    if report.label_kind == "continuous" and report.label_range is not None:
        r = report.label_range
        return f"continuous, {r['min']:g} to {r['max']:g} (mean {r['mean']:.4g})"
    if report.label_kind == "mask":
        values = ", ".join(f"{v:g}" for v in report.mask_values) or "-"
        return f"segmentation masks; values {values}"
    return "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counts.items()) or "-"


def _print_problems(console: Console, problems: list[Problem], kind: str, style: str, root: str) -> None:
    shown_fixes: set[str] = set()
    for problem in problems[:_SHOWN]:
        subject = _display_path(problem.file, root) if problem.file else ""
        head = ", ".join(part for part in (problem.where(), subject) if part)
        line = Text(f"{kind}: ", style=style)
        line.append(f"{head}: {problem.message}" if head else problem.message)
        # The same fix under each of 200 missing files would bury the list: say it once.
        if problem.fix and problem.fix not in shown_fixes:
            shown_fixes.add(problem.fix)
            line.append(f" Fix: {problem.fix}", style="dim")
        console.print(line)
    if len(problems) > _SHOWN:
        console.print(Text(f"... and {len(problems) - _SHOWN} more {kind.lower()}s (--json lists all)."))


def _display_path(file: str, root: str) -> str:
    """A file under the manifest's folder as the manifest would name it; others in full."""
    relative = os.path.relpath(file, root)
    return file if relative.startswith("..") else relative
