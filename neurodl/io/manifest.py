"""Manifests and tables: CSV or TSV, delimiter sniffed, errors that name the column.

A manifest has one row per image (or per subject for biomarkers); image
columns hold paths relative to the manifest's own folder. A BIDS
``participants.tsv`` is a valid manifest.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from neurodl.errors import InputFileError, ManifestError

if TYPE_CHECKING:
    import pandas as pd

_NA_VALUES = ["", "n/a", "N/A", "NA", "nan", "NaN", "null", "None"]


def sniff_delimiter(sample: str, path: Path) -> str:
    """Pick tab, comma or semicolon from the first lines of a table."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        return max(",\t;", key=first.count) if first else ","


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV table (delimiter sniffed; BIDS ``n/a`` is missing).

    Raises:
        InputFileError: missing, empty, not UTF-8, or not a table.

    Example:
        >>> frame = read_table("sample_data/participants.tsv")
    """
    import pandas as pd  # heavy: only when a table is read

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file does not exist.", "Check the path.")
    if path.is_dir():
        raise InputFileError(path, "is a directory, not a CSV/TSV file.", "Give the table itself (e.g. participants.tsv).")
    raw = path.read_bytes()
    if not raw.strip():
        raise InputFileError(path, "is empty.", "Give a CSV/TSV with a header row and one row per subject or image.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            path,
            f"is not UTF-8 text (byte {exc.start} cannot be decoded).",
            "Save it as UTF-8 (in Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`).",
        ) from exc
    if "\x00" in text[:4096]:
        raise InputFileError(path, "is a binary file, not a CSV/TSV table.", "Give a text table with a header row.")
    delimiter = sniff_delimiter("\n".join(text.splitlines()[:20]), path)
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter,
            encoding="utf-8-sig",
            na_values=_NA_VALUES,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InputFileError(path, f"cannot be parsed as a table ({exc}).", "Check that every row has the same number of fields as the header.") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise InputFileError(path, f"has duplicated column names: {', '.join(duplicated)}.", "Rename the columns so each is unique.")
    if len(frame) == 0:
        raise InputFileError(path, "has a header but no rows.", "Add one row per subject or image.")
    if len(frame.columns) == 1 and delimiter == ",":
        only = frame.columns[0]
        if any(sep in only for sep in ("\t", ";", "|", " ")):
            raise InputFileError(path, f"has a single column '{only}': the delimiter was not recognised.", "Use commas (.csv) or tabs (.tsv) between columns.")
    return frame


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: str | Path, *, what: str = "column") -> None:
    """Raise one error naming every missing column and listing the available ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise ManifestError(
            f"{path}: no {what}{'s' if len(missing) > 1 else ''} {names}. Available columns: {', '.join(map(str, frame.columns))}.",
            "Name an existing column with the matching option (e.g. --target, --image, --label).",
        )


def format_rows(rows: Sequence[int], limit: int = 10) -> str:
    """Human row numbers (1 = first data row after the header), shortened after ``limit``."""
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
