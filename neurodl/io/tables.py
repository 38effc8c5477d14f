"""Tables: CSV or TSV files read with the delimiter sniffed, and errors that name the file, row and column.

:func:`read_table` is the one way a table becomes a data frame (a manifest, biomarkers, a labels
table); :func:`require_columns` refuses a table without the columns a command needs and suggests
the nearest names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from neurodl.errors import InputFileError, ManifestError

if TYPE_CHECKING:
    import pandas as pd

_NA_VALUES = ["", "n/a", "N/A", "NA", "nan", "NaN", "null", "None"]


def sniff_delimiter(sample: str, path: Path) -> str:
    """Pick tab, comma or semicolon from the first lines of a table."""
    first = sample.splitlines()[0] if sample else ""
    # A .tsv is tab-separated, unless its header has no tab at all (a CSV misnamed .tsv).
    if path.suffix.lower() == ".tsv" and ("\t" in first or not first):
        return "\t"
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        return max(",\t;", key=first.count) if first else ","


def read_table(path: str | Path, *, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV/TSV table (delimiter sniffed; BIDS ``n/a`` is missing).

    Args:
        path: the table.
        text_columns: columns kept as text, so identifiers such as ``001`` keep their zeros
            (absent columns are ignored).

    Raises:
        InputFileError: missing, empty, not UTF-8, or not a table.

    Example:
        >>> frame = read_table("sample_data/participants.tsv")
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file does not exist.", "Check the path.")
    if path.is_dir():
        raise InputFileError(
            path,
            "is a directory, not a CSV/TSV file.",
            "Give the table itself (e.g. participants.tsv).",
        )
    raw = path.read_bytes()
    if not raw.strip():
        raise InputFileError(
            path, "is empty.", "Give a CSV/TSV with a header row and one row per subject or image."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            path,
            f"is not UTF-8 text (byte {exc.start} cannot be decoded).",
            "Save it as UTF-8 (in Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`).",
        ) from exc
    if "\x00" in text[:4096]:
        raise InputFileError(
            path, "is a binary file, not a CSV/TSV table.", "Give a text table with a header row."
        )
    return parse_table(text, path, text_columns=text_columns)


def parse_table(text: str, path: Path, *, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Parse the text of a CSV/TSV table (see :func:`read_table`); ``path`` names it in errors."""
    import pandas as pd  # heavy: only when a table is read

    delimiter = sniff_delimiter("\n".join(text.splitlines()[:20]), path)
    # pandas silently renames a repeated column ("age", "age.1"), so look at the header itself.
    try:
        # newline="": a lone "\r" (old Mac line ends) ends a row instead of breaking the reader.
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    except csv.Error as exc:
        raise InputFileError(
            path, f"cannot be parsed as a table ({exc}).", "Check the quoting of its header row."
        ) from exc
    names = [name.strip() for name in header]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputFileError(
            path,
            f"has duplicated column names: {', '.join(duplicated)}.",
            "Rename the columns so each is unique.",
        )
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            dtype={name: str for name in text_columns},
            na_values=_NA_VALUES,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InputFileError(
            path,
            f"cannot be parsed as a table ({exc}).",
            "Check that every row has the same number of fields as the header.",
        ) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise InputFileError(path, "has a header but no rows.", "Add one row per subject or image.")
    if len(frame.columns) == 1:
        only = frame.columns[0]
        if any(sep in only for sep in ("\t", ",", ";", "|", " ") if sep != delimiter):
            raise InputFileError(
                path,
                f"has a single column '{only}': the delimiter was not recognised.",
                "Use commas (.csv) or tabs (.tsv) between columns.",
            )
    return frame


def require_columns(
    frame: pd.DataFrame,
    columns: Iterable[str],
    path: str | Path,
    *,
    what: str = "column",
    fix: str | None = None,
) -> None:
    """Raise one error naming every missing column and listing the available ones.

    The fix suggests the nearest column name (case first: ``Diagnosis`` -> ``diagnosis``).
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise ManifestError(
            f"{path}: no {what}{'s' if len(missing) > 1 else ''} {names}. "
            f"Available columns: {', '.join(map(str, frame.columns))}.",
            fix or _column_fix(missing, [str(c) for c in frame.columns]),
        )


def _column_fix(missing: list[str], available: list[str]) -> str:
    import difflib

    guesses = []
    for name in missing:
        same_case = [c for c in available if c.lower() == name.lower()]
        close = same_case or difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        if close:
            guesses.append(f"'{close[0]}' (not '{name}')")
    if guesses:
        return f"Did you mean {', '.join(guesses)}? Column names are case-sensitive."
    return "Give the option that named it one of the available columns."


def format_rows(rows: Sequence[int], limit: int = 10) -> str:
    """Human row numbers (1 = first data row after the header), shortened after ``limit``."""
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
