"""``neurodl info``: shape, voxel size, orientation, dtype and intensities of NIfTI files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag, QuietFlag
from neurodl.errors import ExitStatus

if TYPE_CHECKING:
    from neurodl.errors import ImageError
    from neurodl.io.nifti import ImageSummary

FilesArgument = Annotated[
    list[Path],
    typer.Argument(
        help="NIfTI files (.nii, .nii.gz), or folders to search for them (recursively).",
        metavar="FILE",
        show_default=False,
    ),
]


def info(files: FilesArgument, json_output: JsonFlag = False, quiet: QuietFlag = False) -> None:
    """Show shape, voxel size, orientation, dtype and intensity range of NIfTI files.

    Files that cannot be read are listed after the others, each with a fix; then exits with 2.
    """
    # nibabel and numpy load only when the command runs, so `neurodl --help` stays instant.
    from rich.progress import Progress

    from neurodl.errors import ImageError
    from neurodl.io.nifti import find_nifti_files, summarize_image

    console = err_console()
    targets: list[Path | ImageError] = []
    for given in files:
        if given.is_dir():
            found = find_nifti_files(given)
            if not found:
                targets.append(
                    ImageError(
                        given,
                        "folder contains no .nii or .nii.gz files.",
                        "Give NIfTI files, or a folder that holds some (searched recursively).",
                    )
                )
            targets.extend(found)
        else:
            targets.append(given)
    targets = list(dict.fromkeys(targets))

    summaries: list[ImageSummary] = []
    failures: list[ImageError] = []
    show_progress = not quiet and len(targets) > 1 and console.is_terminal
    with Progress(console=console, transient=True, disable=not show_progress) as progress:
        task = progress.add_task("Reading", total=len(targets))
        for target in targets:
            if isinstance(target, ImageError):
                failures.append(target)
            else:
                try:
                    summaries.append(summarize_image(target))
                except ImageError as exc:
                    failures.append(exc)
            progress.advance(task)

    if summaries and not quiet:
        if console.is_terminal:
            console.print(_table(summaries))
        else:
            # A file or a pipe gets every column whole, tab-separated (no terminal width to fit).
            console.file.write(_tsv(summaries))
            console.file.flush()
    for failure in failures:
        console.print(Text("Error: ", style="bold red") + Text(failure.message))
        if failure.fix:
            console.print(Text("Fix: ", style="bold") + Text(failure.fix))
    if json_output:
        print_json(
            [s.to_dict() for s in summaries]
            + [{"file": str(f.path), "error": f.message, "fix": f.fix} for f in failures]
        )
    if failures:
        raise typer.Exit(ExitStatus.BAD_INPUT)


def _table(summaries: list[ImageSummary]) -> Table:
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    longest = max(len(str(s.path)) for s in summaries)
    table.add_column("File", overflow="fold", min_width=min(longest, 32))
    table.add_column("Shape", no_wrap=True)
    table.add_column("Voxel mm", no_wrap=True)
    table.add_column("Orient", no_wrap=True)
    table.add_column("Dtype", no_wrap=True)
    for name in ("Min", "Max", "Mean", "NaN/Inf"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in summaries:
        bad = s.n_nan + s.n_inf
        table.add_row(*_cells(s, ".3g"), Text(f"{s.n_nan}/{s.n_inf}", style="bold red" if bad else ""))
    return table


def _tsv(summaries: list[ImageSummary]) -> str:
    lines = ["file\tshape\tvoxel_mm\torientation\tdtype\tmin\tmax\tmean\tnan\tinf"]
    for s in summaries:
        lines.append("\t".join([*_cells(s, ".4g"), str(s.n_nan), str(s.n_inf)]))
    return "\n".join(lines) + "\n"


def _cells(s: ImageSummary, voxel: str) -> list[str]:
    """The columns a table and a TSV share: file to mean (voxel sizes in the ``voxel`` format)."""
    return [
        str(s.path),
        "x".join(str(n) for n in s.shape),
        "x".join(f"{v:{voxel}}" for v in s.voxel_size),
        s.orientation,
        s.dtype,
        _number(s.minimum),
        _number(s.maximum),
        _number(s.mean),
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
