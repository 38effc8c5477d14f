"""Manifests: one row per image (or subject), from a CSV/TSV table or a BIDS dataset root.

A manifest has one row per image (or per subject for biomarkers); image
columns hold paths relative to the manifest's own folder. A BIDS
``participants.tsv`` is a valid manifest, and a BIDS dataset root stands in for
one (:mod:`neurodl.io.bids`): :func:`load_manifest` is the one place either
becomes a table, so every command accepts both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neurodl.errors import ManifestError, UsageError
from neurodl.io.tables import parse_table, read_table, require_columns

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PARTICIPANT_COLUMN = "participant_id"
# BIDS identifiers kept as text in any manifest (``run`` 01 is not the number 1.0).
IDENTITY_COLUMNS = ("session_id", "run")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# BIDS entity "sub-<label>": the label is alphanumeric, delimited by "_" or a folder separator.
_BIDS_SUBJECT = re.compile(r"(?:^|[_/\\])(sub-[A-Za-z0-9]+)(?=$|[_./\\])")
_LIST_LIMIT = 10

ParticipantSource = Literal["column", "filename", "row"]


@dataclass(frozen=True)
class ManifestIssue:
    """A cell the loader could not use: an empty value or an image file that is not there.

    Attributes:
        row: position of the data row (0 = first row after the header).
        column: the column of the cell.
        message: what is wrong, for people.
        file: the resolved path, for image cells.
        written: the cell's text, for image cells (as the user wrote it).
    """

    row: int
    column: str
    message: str
    file: Path | None = None
    written: str | None = None

    def describe(self) -> str:
        """``row 2, column 't1': sub-02_T1w.nii.gz: file does not exist``."""
        subject = f"{self.written}: " if self.written else ""
        return f"row {self.row + 1}, column '{self.column}': {subject}{self.message}"


@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated manifest: the table, its image columns and per-row resolved paths.

    Row positions are 0-based (``frame`` is re-indexed 0..n-1); messages for people number
    rows from 1, the first row after the header.

    Attributes:
        path: the CSV/TSV file.
        root: the manifest's folder; relative image paths start here.
        frame: the table as read.
        image_columns: the columns holding input images, one channel each, in order.
        label_column: the target column, if any.
        participant_column: the grouping column (it may be absent: see ``participant_source``).
        participant_source: where participant IDs come from: ``"column"``, ``"filename"``
            (a BIDS ``sub-XXX`` in the first image's path) or ``"row"`` (each row its own).
        image_columns_detected: True when ``image_columns`` were found by looking at the values.
        label_is_image: True when the label column holds NIfTI paths (segmentation masks).
        image_files: per row, the resolved path of each image column (None for an empty cell).
        label_files: per row, the resolved mask path when ``label_is_image``.
        participant_ids: per row, the participant the row belongs to.
        issues: empty cells and missing files (only when loaded with ``require_files=False``;
            otherwise they raise).
        warnings: images or participants a BIDS dataset's resolution left out, for people.
    """

    path: Path
    root: Path
    frame: pd.DataFrame
    image_columns: tuple[str, ...]
    label_column: str | None
    participant_column: str
    participant_source: ParticipantSource
    image_files: tuple[tuple[Path | None, ...], ...]
    participant_ids: tuple[str, ...]
    label_files: tuple[Path | None, ...] | None = None
    image_columns_detected: bool = False
    label_is_image: bool = False
    issues: tuple[ManifestIssue, ...] = ()
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.frame)

    def image_paths(self, row: int) -> list[Path]:
        """Absolute paths of the row's images, one per image column (channel order).

        Raises:
            ManifestError: the row has an empty image cell.
        """
        paths = self.image_files[row]
        for column, path in zip(self.image_columns, paths, strict=True):
            if path is None:
                raise ManifestError(
                    f"{self.path}: row {row + 1}, column '{column}' is empty.",
                    "Give every row a path in each image column, or remove the row.",
                )
        return [p for p in paths if p is not None]

    def row_values(self, row: int, *, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The row's cells (but ``skip``), for a table written from it elsewhere.

        NIfTI paths are made absolute: they were relative to the manifest's folder,
        and the new table lives in another one.
        """
        skipped = set(skip)
        values: dict[str, Any] = {}
        for key, value in self.frame.iloc[row].items():
            if key in skipped:
                continue
            if isinstance(value, str) and value.strip().lower().endswith(_NIFTI_SUFFIXES):
                value = os.path.normpath(os.path.join(self.root, value.strip()))
            values[str(key)] = value
        return values

    def label_path(self, row: int) -> Path | None:
        """Absolute path of the row's label image (segmentation mask), or None."""
        return None if self.label_files is None else self.label_files[row]

    @property
    def participants(self) -> pd.Series:
        """Participant ID of each row (the grouping key for splits)."""
        import pandas as pd  # heavy: only when a manifest is used

        return pd.Series(self.participant_ids, index=self.frame.index, name=self.participant_column)

    @property
    def labels(self) -> pd.Series | None:
        """The label column (None without one)."""
        return None if self.label_column is None else self.frame[self.label_column]


def looks_like_nifti_column(values: Iterable[Any]) -> bool:
    """True if most non-empty values end in ``.nii`` or ``.nii.gz``."""
    texts = [str(v).strip() for v in values if not is_empty_cell(v)]
    if not texts:
        return False
    hits = sum(text.lower().endswith(_NIFTI_SUFFIXES) for text in texts)
    return hits * 2 >= len(texts)


def participant_from_path(path: str | Path) -> str | None:
    """The BIDS subject (``sub-XXX``) in a file name, else in its folders, else None.

    Example:
        >>> participant_from_path("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
        'sub-01'
    """
    text = str(path)
    name_match = _BIDS_SUBJECT.search(Path(text).name)
    if name_match:
        return name_match.group(1)
    path_match = _BIDS_SUBJECT.search(text)
    return path_match.group(1) if path_match else None


def load_manifest(
    path: str | Path,
    image_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    participant_column: str = DEFAULT_PARTICIPANT_COLUMN,
    *,
    require_files: bool = True,
    bids_filter: Sequence[str] = (),
    bids_images: Sequence[str] = (),
    drop_unpaired: bool | None = None,
) -> Manifest:
    """Read a CSV/TSV manifest, or resolve a BIDS dataset root, and resolve its image paths.

    Image paths are relative to the manifest's own folder (absolute paths and ``~`` work
    too). Participants come from ``participant_column``; when that column is absent and is
    the default ``participant_id``, each row's participant is the BIDS ``sub-XXX`` found in
    its first image's path, else the row is its own participant. A participant column named
    explicitly must exist. A label column whose values are NIfTI paths is a column of
    segmentation masks: its files are resolved and checked like images.

    A folder is a BIDS dataset root (:func:`neurodl.io.bids.resolve_bids`): image columns
    name suffixes (``T1w``), a label that is a suffix (``dseg``) is a mask, other labels
    come from ``participants.tsv``/``sessions.tsv``; images without a label value are left
    out with a warning (``Manifest.warnings``, also logged). So are images without a
    partner of every other suffix (same participant, session and run) with ``require_files``;
    without it they are empty cells in ``Manifest.issues``.

    Args:
        path: the manifest.
        image_columns: one column per input channel; None picks every column whose values
            are NIfTI paths (``Manifest.image_columns_detected`` is then True).
        label_column: the target column (class, value or mask path).
        participant_column: the grouping column for splits.
        require_files: raise on empty cells and missing files; with False they are collected
            in ``Manifest.issues`` instead (for ``neurodl check``, which reports everything).
        bids_filter: ``ENTITY=VALUE`` items that select a BIDS dataset's images (``acq=mprage``).
        bids_images: further suffixes a BIDS dataset's rows need as columns (translate's target).
        drop_unpaired: leave out a BIDS dataset's images that lack a partner of another suffix
            (default: with ``require_files``, as training does; ``neurodl check`` asks for it too).

    Raises:
        InputFileError: the manifest is missing or not a table.
        ManifestError: a named column is missing (the error lists the available ones), no
            column holds images, or (with ``require_files``) cells are empty or files missing,
            all listed in one message.

    Example:
        >>> manifest = load_manifest("sample_data/participants.tsv", ["t1"], "diagnosis")
        >>> manifest.image_paths(0)
        [PosixPath('/.../sample_data/sub-001/anat/sub-001_T1w.nii.gz')]
    """
    path = Path(path)
    if isinstance(image_columns, str):
        image_columns = [image_columns]
    named = [*(image_columns or []), *([label_column] if label_column else [])]
    warnings: list[str] = []
    if path.is_dir():
        table = _bids_table(path, image_columns, label_column, bids_filter, bids_images)
        frame = parse_table(table.text, path, text_columns=[participant_column, *table.text_columns, *named])
        root = Path(os.path.abspath(path))
        image_columns = image_columns or list(table.image_columns)
        warnings += table.warnings
        if require_files if drop_unpaired is None else drop_unpaired:
            frame = _drop_unpaired(frame, table.image_columns, path, warnings)
        if label_column is not None and label_column not in table.image_columns:
            frame = _drop_unlabelled(frame, label_column, path, warnings)
    else:
        if bids_filter:
            raise UsageError(
                f"--bids-filter selects images of a BIDS dataset, but {path} is a table.",
                "Give the dataset's root folder instead, or drop --bids-filter.",
            )
        frame = read_table(path, text_columns=[participant_column, *IDENTITY_COLUMNS, *named])
        root = Path(os.path.abspath(path)).parent
    frame = frame.reset_index(drop=True)

    required = list(named)
    if participant_column != DEFAULT_PARTICIPANT_COLUMN:
        required.append(participant_column)
    require_columns(frame, required, path)

    detected = image_columns is None
    if image_columns is None:
        image_columns = _detect_image_columns(frame, path, exclude=(label_column, participant_column))
    columns = tuple(dict.fromkeys(image_columns))
    if not columns:
        raise ManifestError(f"{path}: no image column given.", "Name one with --image COLUMN.")
    if label_column is not None and label_column in columns:
        raise ManifestError(
            f"{path}: column '{label_column}' is both an image column and the label column.",
            "Give the label column with --label only, and the image columns with --image.",
        )

    issues: list[ManifestIssue] = []
    bids = path.is_dir()
    what_image = "image of this participant, session and run" if bids else "image path"
    what_mask = "mask of this participant, session and run" if bids else "mask"
    # Whole columns as lists: a cell look-up through pandas costs more than the file check.
    cells = {
        column: frame[column].tolist() for column in (*columns, *([label_column] if label_column else []))
    }
    image_files = tuple(
        tuple(
            _resolve_cell(cells[column][row], row, column, root, issues, what=what_image)
            for column in columns
        )
        for row in range(len(frame))
    )

    label_files = None
    label_is_image = False
    if label_column is not None:
        label_is_image = looks_like_nifti_column(frame[label_column])
        if label_is_image:
            label_files = tuple(
                _resolve_cell(cells[label_column][row], row, label_column, root, issues, what_mask)
                for row in range(len(frame))
            )
        else:
            for row in range(len(frame)):
                if is_empty_cell(cells[label_column][row]):
                    issues.append(ManifestIssue(row, label_column, "the label is empty."))

    participant_ids, source = _participants(frame, participant_column, columns[0], issues)

    manifest = Manifest(
        path=path,
        root=root,
        frame=frame,
        image_columns=columns,
        label_column=label_column,
        participant_column=participant_column,
        participant_source=source,
        image_files=image_files,
        participant_ids=participant_ids,
        label_files=label_files,
        image_columns_detected=detected,
        label_is_image=label_is_image,
        issues=tuple(issues),
        warnings=tuple(warnings),
    )
    if require_files and issues:
        raise manifest_issues_error(manifest)
    return manifest


def _bids_table(
    path: Path,
    image_columns: Sequence[str] | None,
    label_column: str | None,
    bids_filter: Sequence[str],
    bids_images: Sequence[str],
) -> Any:
    from neurodl.io.bids import is_bids_root, not_a_bids_root, resolve_bids, scan_bids

    if not is_bids_root(path):
        raise not_a_bids_root(path)
    files = scan_bids(path)
    found = sorted({f.suffix for f in files})
    if not image_columns:
        raise ManifestError(
            f"{path}: a BIDS dataset; which images? Suffixes found: {', '.join(found) or 'none'}.",
            "Name the suffix of each input channel with --image (e.g. --image T1w).",
        )
    suffixes = [*image_columns, *bids_images]
    if label_column is not None and label_column in found:
        suffixes.append(label_column)  # a mask (e.g. dseg), paired with the images like a channel
    return resolve_bids(path, suffixes, bids_filter, files=files)


def _drop_unpaired(
    frame: pd.DataFrame, suffixes: Sequence[str], path: Path, warnings: list[str]
) -> pd.DataFrame:
    """Leave out a BIDS dataset's images that lack an image of another suffix (a T1w without its T2w)."""
    empty = frame[list(suffixes)].map(is_empty_cell).to_numpy(dtype=bool)
    lacking = empty.any(axis=1)
    if not lacking.any():
        return frame
    if lacking.all():
        raise ManifestError(
            f"{path}: no {suffixes[0]} image has a matching {' and '.join(suffixes[1:])} image "
            "(same participant, session and run).",
            "Check the file names, or select the images with --bids-filter.",
        )
    for column, suffix in enumerate(suffixes):
        rows = [int(r) for r in empty[:, column].nonzero()[0]]
        if rows:
            _left_out(
                f"{suffixes[0]} image",
                f"without a {suffix} image (same participant, session and run)",
                frame,
                rows,
                path,
                warnings,
            )
    return frame.loc[~lacking]


def _drop_unlabelled(frame: pd.DataFrame, label: str, path: Path, warnings: list[str]) -> pd.DataFrame:
    """Leave out a BIDS dataset's images whose participant (or session) has no label value."""
    if label not in frame.columns:
        return frame  # require_columns names it with the columns there are
    empty = frame[label].map(is_empty_cell).to_numpy(dtype=bool)
    if not empty.any():
        return frame
    if empty.all():
        raise ManifestError(
            f"{path}: no image has a '{label}' value in participants.tsv or sessions.tsv.",
            "Fill the column, or name another one with --label.",
        )
    rows = [int(r) for r in empty.nonzero()[0]]
    _left_out(
        "image", f"without a '{label}' value in participants.tsv/sessions.tsv", frame, rows, path, warnings
    )
    return frame.loc[~empty]


def _left_out(
    what: str, why: str, frame: pd.DataFrame, rows: list[int], path: Path, warnings: list[str]
) -> None:
    """Warn (log and keep) that rows are left out, naming their participant, session and run."""
    where = frame.iloc[rows][[c for c in ("participant_id", "session_id", "run") if c in frame.columns]]
    names = [" ".join(str(v) for v in row if not is_empty_cell(v)) for row in where.itertuples(index=False)]
    shown = ", ".join(names[:_LIST_LIMIT]) + (
        f" and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
    )
    message = f"{len(rows)} {what}{'s' if len(rows) > 1 else ''} {why} left out: {shown}."
    from neurodl.io.bids import warn_once

    warn_once(f"{path}: {message}")
    warnings.append(message)


def manifest_issues_error(manifest: Manifest) -> ManifestError:
    """One error listing every empty cell and missing file of a manifest (shortened)."""
    issues = manifest.issues
    missing = [i for i in issues if i.file is not None]
    lines = [f"  {i.describe()}" for i in issues[:_LIST_LIMIT]]
    if len(issues) > _LIST_LIMIT:
        lines.append(f"  and {len(issues) - _LIST_LIMIT} more")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing file{'s' if len(missing) > 1 else ''}")
    if len(issues) > len(missing):
        empty = len(issues) - len(missing)
        parts.append(f"{empty} empty cell{'s' if empty > 1 else ''}")
    return ManifestError(
        f"{manifest.path}: {' and '.join(parts)}:\n" + "\n".join(lines),
        f"Paths are relative to the manifest's folder ({manifest.root}); correct them or fill "
        f"the cells, then run `neurodl check {manifest.path}` to see every problem at once.",
    )


def is_empty_cell(value: Any) -> bool:
    """Whether a manifest cell holds nothing: None, blank text, or NaN (pandas' empty cell)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        # NaN (float, numpy or pandas) is the only value unequal to itself.
        return bool(value != value)
    except TypeError:  # pandas.NA refuses to be a bool
        return True
    except ValueError:
        return False


def _resolve_cell(
    value: Any, row: int, column: str, root: Path, issues: list[ManifestIssue], what: str
) -> Path | None:
    if is_empty_cell(value):
        message = (
            f"no {what} (no file with this suffix)." if "participant" in what else f"the {what} is empty."
        )
        issues.append(ManifestIssue(row, column, message))
        return None
    written = str(value).strip()
    candidate = Path(written).expanduser()
    resolved = Path(os.path.normpath(candidate if candidate.is_absolute() else root / candidate))
    if not resolved.exists():
        issues.append(ManifestIssue(row, column, "file does not exist.", resolved, written))
    elif resolved.is_dir():
        issues.append(ManifestIssue(row, column, "is a directory, not a file.", resolved, written))
    return resolved


def _detect_image_columns(frame: pd.DataFrame, path: Path, exclude: Iterable[str | None]) -> list[str]:
    skip = set(exclude)
    found = [str(c) for c in frame.columns if c not in skip and looks_like_nifti_column(frame[c])]
    if not found:
        raise ManifestError(
            f"{path}: no column holds NIfTI paths (.nii/.nii.gz). "
            f"Columns: {', '.join(map(str, frame.columns))}.",
            "Name the image column(s) with --image COLUMN, or add a column with each image's "
            "path relative to the manifest's folder (a BIDS participants.tsv lists participants, "
            "not images).",
        )
    return found


def _participants(
    frame: pd.DataFrame,
    column: str,
    first_image_column: str,
    issues: list[ManifestIssue],
) -> tuple[tuple[str, ...], ParticipantSource]:
    if column in frame.columns:
        ids: list[str] = []
        for row, value in enumerate(frame[column]):
            if is_empty_cell(value):
                issues.append(ManifestIssue(row, column, "the participant ID is empty."))
                ids.append(f"row-{row + 1}")
            else:
                ids.append(str(value).strip())
        return tuple(ids), "column"
    # Parse the path as written: folders above the manifest say nothing about the participant.
    parsed = [
        None if is_empty_cell(value) else participant_from_path(str(value).strip())
        for value in frame[first_image_column]
    ]
    if any(p is not None for p in parsed):
        return tuple(p if p is not None else f"row-{row + 1}" for row, p in enumerate(parsed)), "filename"
    return tuple(f"row-{row + 1}" for row in range(len(frame))), "row"
