"""``neurodl manifest``: the manifest a BIDS dataset resolves to, written for people to read or edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import JsonFlag, OverwriteFlag, QuietFlag, column_option


def manifest(
    root: Annotated[
        Path,
        typer.Argument(
            help="Root of a BIDS dataset (dataset_description.json or sub-* folders).",
            metavar="BIDS_ROOT",
            show_default=False,
        ),
    ],
    image: Annotated[
        list[str],
        typer.Option(
            "--image",
            "-i",
            help="Image suffix (T1w); repeat for several channels (--image T1w --image T2w).",
            metavar="SUFFIX",
            show_default=False,
        ),
    ],
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask", help="Suffix of label images (e.g. dseg), paired like a channel.", metavar="SUFFIX"
        ),
    ] = None,
    label: str | None = column_option(
        "--label",
        "-l",
        help="Label column of participants.tsv/sessions.tsv: images without a value are left out, as training does.",
    ),
    bids_filter: Annotated[
        list[str] | None,
        typer.Option(
            "--bids-filter",
            help="Keep the images whose entity has this value (acq=mprage, ses=01); repeat for several.",
            metavar="ENTITY=VALUE",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="TSV to write (default: stdout, absolute paths).", dir_okay=False
        ),
    ] = None,
    absolute: Annotated[
        bool,
        typer.Option("--absolute", help="Absolute image paths (default: relative to the output's folder)."),
    ] = False,
    overwrite: OverwriteFlag = False,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Write the manifest a BIDS dataset resolves to: one row per image (participant x session x run).

    Rows and columns are what `train`, `check` and `evaluate` use when given the dataset root
    itself: participant_id, session_id and run from the path, one column per suffix, the
    columns of participants.tsv and sessions.tsv. Training from the file gives the same run.

    Example: neurodl manifest ds000001 --image T1w --label diagnosis -o manifest.tsv
    """
    import sys

    from rich.text import Text

    from neurodl.errors import ManifestError, OutputError
    from neurodl.io.atomic import write_text_atomic
    from neurodl.io.bids import manifest_text
    from neurodl.io.manifest import load_manifest

    console = err_console()
    if not root.is_dir():
        raise ManifestError(
            f"{root}: is not a folder.",
            "Give the root folder of a BIDS dataset (it holds the sub-* folders).",
        )
    if output is not None and output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists.", "Choose another --output, or add --overwrite.")
    resolved = load_manifest(
        root, image, label, bids_filter=bids_filter or (), bids_images=[mask] if mask else []
    )
    text = manifest_text(resolved, output, absolute=absolute)
    for warning in resolved.warnings:
        console.print(Text("Warning: ", style="bold yellow") + Text(warning))
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(output, text)
    participants = len(set(resolved.participant_ids))
    if json_output:
        print_json(
            {
                "manifest": str(output) if output else None,
                "rows": len(resolved),
                "participants": participants,
                "columns": list(map(str, resolved.frame.columns)),
                "warnings": list(resolved.warnings),
            }
        )
    if not quiet and output is not None:
        console.print(f"{len(resolved)} images of {participants} participants written to {output}")
