"""``neurodl sample-data``: write the synthetic phantom cohort (CN/AD, T1w, T2w, labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag, OverwriteFlag, QuietFlag, SeedOption


def sample_data(
    out: Annotated[
        Path,
        typer.Argument(
            help="Folder to create (new or empty): sub-XXX/anat/*.nii.gz, participants.tsv, dseg.tsv."
        ),
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of participants, half CN and half AD.")] = 40,
    size: Annotated[
        int,
        typer.Option(
            "--size",
            help="Voxels per axis at 1 mm isotropic, i.e. the field of view in mm (16-256). "
            "Subjects with 1.5 mm slices get fewer slices.",
        ),
    ] = 64,
    seed: SeedOption = 0,
    overwrite: OverwriteFlag = False,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Generate a synthetic brain-phantom cohort: CN and AD subjects with T1w, T2w and tissue labels.

    AD subjects have enlarged ventricles, wider sulci, thinner cortex and lower
    metabolism. Some subjects are stored in LAS/LPS orientation or with 1.5 mm
    slices. The same options give byte-identical files.
    """
    # numpy, scipy and nibabel load here, not at import, so `neurodl --help` stays instant.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from neurodl.data.phantom import generate_cohort

    console = err_console()
    progress = Progress(
        TextColumn("Generating subjects"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    task = progress.add_task("subjects", total=n)

    def report(done: int, total: int) -> None:
        # Started on the first report, which comes after the arguments are checked,
        # so that a usage error is not preceded by an empty progress bar.
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        summary = generate_cohort(out, n=n, size=size, seed=seed, overwrite=overwrite, progress=report)
    finally:
        progress.stop()

    if not quiet:
        table = Table(title=f"{summary.n} participants in {out}", title_justify="left")
        table.add_column("diagnosis")
        table.add_column("n", justify="right")
        table.add_column("mean CSF (mL)", justify="right")
        for diagnosis in ("CN", "AD"):
            table.add_row(
                diagnosis,
                str(summary.count(diagnosis)),
                f"{summary.mean_csf_ml(diagnosis):.2f}",
            )
        console.print(table)
        if summary.removed:
            console.print(f"Removed {len(summary.removed)} image(s) of the previous cohort in {out}.")
        console.print(f"Manifest: {summary.manifest}  ({summary.seconds:.1f} s)")
    if json_output:
        print_json(summary.to_dict())
