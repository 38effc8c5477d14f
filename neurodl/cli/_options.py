"""Options shared by several commands, defined once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from neurodl.config import ImageOptions

JsonFlag = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables on stderr.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same result.")]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. auto picks a GPU when there is one.")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML or JSON file of options; flags given on the command line override it.",
        dir_okay=False,
    ),
]
ModelDirOption = Annotated[
    Path, typer.Option("--model", "-m", help="Run directory written by the matching `train` command.")
]
OverwriteFlag = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")]
AllowOverlapFlag = Annotated[
    bool, typer.Option("--allow-overlap", help="Score participants the model was trained on (optimistic).")
]


def _check_shard(value: str | None) -> str | None:
    """Refuse a bad --shard before a model is loaded (exit 2 with the fix)."""
    if value is not None:
        from neurodl.data.inputs import parse_shard  # only when given: keeps --help fast

        parse_shard(value)
    return value


ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Process only shard I of N (e.g. 3/10; every N-th input from the I-th, 1 <= I <= N) for job "
        "arrays; files, folders and manifests are split the same way.",
        callback=_check_shard,
    ),
]


def _check_workers(value: int) -> int:
    if value < 0:
        from neurodl.errors import UsageError

        raise UsageError(
            f"--workers must be 0 or more, not {value}.", "Use e.g. --workers 2 (0: no threads)."
        )
    return value


PredictWorkers = Annotated[
    int,
    typer.Option(
        "--workers",
        callback=_check_workers,
        help="Threads reading and preprocessing the next images while the model computes (the previous "
        "output is written behind it); 0: one image after the other. Outputs are the same either way.",
    ),
]
ImageInputs = Annotated[
    list[Path],
    typer.Argument(
        help="NIfTI files, folders of them, or one manifest (CSV/TSV) with the model's image columns."
    ),
]

# --bids-filter of the commands that read a BIDS dataset besides `train`: the flag of ImageOptions.bids_filter.
_BIDS_FILTER = next(f for f in dataclasses.fields(ImageOptions) if f.name == "bids_filter").metadata["flag"]
BidsFilter = Annotated[
    list[str] | None,
    typer.Option(
        *_BIDS_FILTER.names,
        help=_BIDS_FILTER.help,
        metavar=_BIDS_FILTER.metavar,
        rich_help_panel=_BIDS_FILTER.panel,
    ),
]


# Options whose help differs from command to command: the ``typer.Option`` is the parameter's default.
def output_folder(default: Path | None, help: str) -> Any:
    """``-o/--out``: the folder a command writes its files to (``help`` says which)."""
    return typer.Option(default, "--out", "-o", help=help, file_okay=False)


def preview_flag(help: str, default: bool = False) -> Any:
    """``--preview/--no-preview``: whether a per-image command also writes a PNG per input (``help`` says of what)."""
    return typer.Option(default, "--preview/--no-preview", help=help)


def output_table(help: str = "CSV to write (default: stdout).") -> Any:
    """``-o/--output``: the table a command writes, on stdout without it."""
    return typer.Option(None, "--output", "-o", help=help, dir_okay=False)


def column_option(*names: str, help: str) -> Any:
    """An option that names a column of the manifest (none by default)."""
    return typer.Option(None, *names, help=help, metavar="COLUMN", show_default=False)


def mask_column(scored: str) -> Any:
    """``--mask`` of an image-quality ``evaluate``: what is ``scored`` only inside the mask."""
    return typer.Option(
        None, "--mask", help=f"Column of label images: {scored} only inside mask > 0 (SSIM: whole image)."
    )
