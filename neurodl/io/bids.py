"""BIDS datasets as manifests: a small reader that turns a dataset root into one row per image.

A BIDS root (a folder with ``dataset_description.json`` or ``sub-*`` folders) stands
in for a manifest: ``--image T1w`` names a suffix, each image (participant x session x
run) is a row, ``participant_id``/``session_id``/``run`` come from the path, and the
other columns come from ``participants.tsv`` and ``sub-*/sub-*_sessions.tsv``.

The reader walks the tree with :func:`os.scandir` and reads the tables with :mod:`csv`:
pybids builds a SQL index of every file and its metadata first, which takes minutes
for a thousand subjects; this takes well under a second (``docs/data.md``).
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import hashlib
import io
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neurodl.errors import ManifestError, UsageError

if TYPE_CHECKING:
    from neurodl.io.manifest import Manifest

log = logging.getLogger(__name__)

# Top-level folders that hold no raw images of the dataset (BIDS 1.9, "Common principles").
SKIPPED_FOLDERS = ("derivatives", "sourcedata", "code", "stimuli")
_NIFTI = (".nii.gz", ".nii")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_NA = {"", "n/a", "N/A", "NA", "nan", "NaN", "null", "None"}
_SHOWN = 10


@dataclass(frozen=True)
class BidsFile:
    """One NIfTI file of the dataset, parsed from its name.

    Attributes:
        path: the file, relative to the scanned folder (POSIX separators).
        entities: the name's key-value pairs in order (``sub`` first), e.g. ``(("sub", "01"), ("run", "2"))``.
        suffix: the last part of the name (``T1w``, ``dseg``).
        datatype: the folder the file lies in (``anat``, ``func``; empty at a subject's top).
    """

    path: str
    entities: tuple[tuple[str, str], ...]
    suffix: str
    datatype: str

    def entity(self, key: str) -> str | None:
        """The value of one entity (``"01"`` for ``ses-01``), or None."""
        for name, value in self.entities:
            if name == key:
                return value
        return None

    @property
    def participant(self) -> str:
        return f"sub-{self.entity('sub')}"

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """What makes this image a row of its own: every entity (the suffix excepted)."""
        return self.entities

    @property
    def visit(self) -> tuple[str | None, str | None]:
        """(session, run): how images of several suffixes are paired into one row."""
        return self.entity("ses"), _run_number(self.entity("run"))


@dataclass(frozen=True)
class BidsTable:
    """The manifest a BIDS folder resolves to, as TSV text with paths relative to the folder.

    Attributes:
        root: the folder.
        text: the manifest (header and one row per image), tab-separated.
        columns: its header.
        image_columns: the suffixes, one column each.
        text_columns: columns to keep as text (identifiers such as ``01``).
        warnings: what was left out or could not be joined, for people.
    """

    root: Path
    text: str
    columns: tuple[str, ...]
    image_columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())


def is_bids_root(path: str | Path) -> bool:
    """True for a folder with ``dataset_description.json`` or at least one ``sub-*`` folder."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "dataset_description.json").is_file():
        return True
    with os.scandir(path) as entries:
        return any(e.name.startswith("sub-") and e.is_dir() for e in entries)


def not_a_bids_root(path: Path) -> ManifestError:
    """The error for a folder given where a manifest or BIDS root was expected."""
    hint = (
        f" It looks like one subject's folder: the dataset root is {path.parent}."
        if path.name.startswith(("sub-", "ses-")) or path.name in ("anat", "func", "dwi")
        else ""
    )
    return ManifestError(
        f"{path}: is a folder, but not a BIDS dataset: it has no dataset_description.json and no "
        f"sub-* folders.{hint}",
        "Give a manifest (CSV/TSV, one row per image) or the root of a BIDS dataset.",
    )


def parse_bids_name(name: str) -> tuple[tuple[tuple[str, str], ...], str] | None:
    """Entities and suffix of a BIDS NIfTI file name, or None when the name is not BIDS.

    Example:
        >>> parse_bids_name("sub-01_ses-2_run-1_T1w.nii.gz")
        ((('sub', '01'), ('ses', '2'), ('run', '1')), 'T1w')
    """
    lower = name.lower()
    stem = next((name[: -len(ext)] for ext in _NIFTI if lower.endswith(ext)), None)
    if stem is None:
        return None
    *pairs, suffix = stem.split("_")
    if not pairs or not _LABEL.match(suffix):
        return None
    entities = []
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not _LABEL.match(key) or not _LABEL.match(value):
            return None
        entities.append((key, value))
    if entities[0][0] != "sub":
        return None
    return tuple(entities), suffix


def parse_filters(texts: Iterable[str]) -> dict[str, set[str]]:
    """``["acq=mprage", "ses=01,02"]`` -> ``{"acq": {"mprage"}, "ses": {"01", "02"}}``.

    A key given twice accepts either value; different keys must all match. ``ses-01``
    and ``01`` mean the same; runs compare as numbers (``run=1`` matches ``run-01``).

    Raises:
        UsageError: an item is not ``KEY=VALUE``.
    """
    filters: dict[str, set[str]] = defaultdict(set)
    for text in texts:
        key, sep, values = str(text).partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not _LABEL.match(key) or not parts:
            raise UsageError(
                f"--bids-filter '{text}' is not of the form ENTITY=VALUE.",
                "For example --bids-filter acq=mprage or --bids-filter ses=01 (repeat for several).",
            )
        for value in parts:
            value = value.removeprefix(f"{key}-")
            filters[key].add(str(int(value)) if key == "run" and value.isdigit() else value)
    return dict(filters)


def read_bidsignore(root: Path) -> tuple[str, ...]:
    """The patterns of the root's ``.bidsignore`` (gitignore-like), without comments."""
    path = root / ".bidsignore"
    if not path.is_file():
        return ()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def is_ignored(relative: str, patterns: Sequence[str], *, folder: bool = False) -> bool:
    """True when ``.bidsignore`` patterns exclude a path (relative to the root, POSIX).

    A pattern with no ``/`` (but a trailing one) matches a name at any depth; one that
    starts with ``/`` or contains ``/`` matches the path from the root; a trailing ``/``
    matches folders only; ``**/`` matches any depth.
    """
    name = relative.rsplit("/", 1)[-1]
    for raw in patterns:
        pattern = raw
        if pattern.endswith("/"):
            if not folder:
                continue
            pattern = pattern.rstrip("/")
        pattern = pattern.removeprefix("**/")
        if "/" not in pattern.lstrip("/") and not raw.startswith("/"):
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
            return True
    return False


def scan_bids(root: str | Path) -> list[BidsFile]:
    """Every BIDS-named NIfTI file of a dataset's ``sub-*`` folders, sorted by path.

    ``derivatives/``, ``sourcedata/``, ``code/``, ``stimuli/``, hidden files and folders,
    and what ``.bidsignore`` lists are skipped. Given a folder inside a dataset (a
    subject's, a session's), its files are scanned the same way.
    """
    root = Path(root)
    patterns = read_bidsignore(root)
    dataset = is_bids_root(root)
    files: list[BidsFile] = []
    with os.scandir(root) as entries:
        top = sorted(entries, key=lambda e: e.name)
    for entry in top:
        if entry.name.startswith(".") or entry.name in SKIPPED_FOLDERS:
            continue
        if entry.is_dir() and (entry.name.startswith("sub-") or not dataset):
            files.extend(_walk(entry.path, entry.name, patterns))
        elif entry.is_file() and not dataset:
            files.extend(_parsed(entry.name, entry.name, ""))
    return sorted(files, key=lambda f: f.path)


def _walk(folder: str, relative: str, patterns: Sequence[str]) -> Iterator[BidsFile]:
    if is_ignored(relative, patterns, folder=True):
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{relative}/{entry.name}"
            if entry.is_dir():
                yield from _walk(entry.path, path, patterns)
            elif not is_ignored(path, patterns):
                yield from _parsed(entry.name, path, relative.rsplit("/", 1)[-1])


def _parsed(name: str, path: str, datatype: str) -> Iterator[BidsFile]:
    parsed = parse_bids_name(name)
    if parsed is not None:
        entities, suffix = parsed
        yield BidsFile(path, entities, suffix, "" if datatype.startswith(("sub-", "ses-")) else datatype)


def _run_number(value: str | None) -> str | None:
    """``"01"`` -> ``"1"``: runs are indices, so ``run-1`` and ``run-01`` are the same run."""
    return str(int(value)) if value is not None and value.isdigit() else value


def _matches(file: BidsFile, filters: dict[str, set[str]]) -> bool:
    for key, values in filters.items():
        if key == "datatype":
            value: str | None = file.datatype
        elif key == "run":
            value = _run_number(file.entity("run"))
        else:
            value = file.entity(key)
        if value not in values:
            return False
    return True


def _read_tsv(path: Path) -> list[dict[str, str]]:
    """A BIDS TSV as text rows (values kept as written, so the manifest parses them once)."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    return [{str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _subject(value: str) -> str:
    value = value.strip()
    return value if value.startswith("sub-") else f"sub-{value}"


def _session(value: str) -> str:
    value = value.strip()
    return value if value.startswith("ses-") else f"ses-{value}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def suffixes_found(root: str | Path) -> Counter[str]:
    """How many images of each suffix the dataset holds (``T1w: 40``)."""
    return Counter(f.suffix for f in scan_bids(root))


def resolve_bids(
    root: str | Path,
    suffixes: Sequence[str],
    filters: Iterable[str] = (),
    *,
    files: Sequence[BidsFile] | None = None,
) -> BidsTable:
    """The manifest of a BIDS folder: one row per image of the first suffix.

    Rows are the images of ``suffixes[0]`` that pass ``filters`` (one per participant x
    session x run, and per other entity such as ``acq``); each further suffix is a
    further column, paired by participant, session and run. Columns:
    ``participant_id``, ``session_id`` (with sessions), ``run`` (with runs), other
    entities that vary, one column per suffix (paths relative to ``root``), then the
    columns of ``participants.tsv`` and of each subject's ``sessions.tsv`` (per-session
    values win over per-participant ones of the same name).

    Args:
        root: the dataset root (or a subject's folder: then no tables are joined).
        suffixes: image suffixes, one column (channel) each.
        filters: ``ENTITY=VALUE`` items (see :func:`parse_filters`).
        files: the scanned files, when the caller already has them.

    Raises:
        ManifestError: no image with a suffix (the error lists the suffixes found), or
            no image left after the filters.
        UsageError: a malformed filter.

    Example:
        >>> table = resolve_bids("sample_data", ["T1w"])
        >>> table.columns[:2]
        ('participant_id', 'T1w')
    """
    root = Path(root)
    wanted = parse_filters(filters)
    if files is None:
        files = scan_bids(root)
    suffixes = list(dict.fromkeys(suffixes))
    found = Counter(f.suffix for f in files)
    missing = [s for s in suffixes if s not in found]
    if missing:
        what = ", ".join(f"'{s}'" for s in missing)
        raise ManifestError(
            f"{root}: no image with the BIDS suffix {what}"
            + (f"; suffixes found: {_counts(found)}." if found else "; it holds no BIDS-named NIfTI image."),
            "Name a suffix that is there with --image (e.g. --image T1w); images under derivatives/, "
            "sourcedata/, hidden folders and .bidsignore are skipped.",
        )
    kept = [f for f in files if f.suffix in suffixes and _matches(f, wanted)]
    by_suffix: dict[str, list[BidsFile]] = {s: [f for f in kept if f.suffix == s] for s in suffixes}
    primary = by_suffix[suffixes[0]]
    if not primary:
        seen = {
            key: sorted({v for f in files if f.suffix == suffixes[0] for v in [_value(f, key)] if v})
            for key in wanted
        }
        present = "; ".join(f"{key}: {', '.join(v) or 'none'}" for key, v in seen.items())
        raise ManifestError(
            f"{root}: no {suffixes[0]} image matches --bids-filter {' '.join(_filter_text(wanted))} "
            f"(values found: {present}).",
            "Use a value that is there, or drop the filter.",
        )
    warnings: list[str] = []

    # Pair further suffixes by participant, session and run (an exact entity match wins); an
    # image without its partner keeps its row with an empty cell, so the rows do not depend on
    # which suffixes were asked for (evaluate reads a dataset twice: with and without masks).
    visits = [_by_visit(by_suffix[s]) for s in suffixes[1:]]
    rows = [(image, [_partner(image, visit) for visit in visits]) for image in primary]

    participants_rows, participant_columns = _participants_table(root)
    sessions, session_columns = _sessions_tables(root, {image.participant for image, _ in rows})

    has_sessions = any(image.entity("ses") for image, _ in rows)
    has_runs = any(image.entity("run") for image, _ in rows)
    others = [
        key
        for key in dict.fromkeys(k for image, _ in rows for k, _ in image.entities)
        if key not in ("sub", "ses", "run") and len({image.entity(key) for image, _ in rows}) > 1
    ]
    identity = ["participant_id", *(["session_id"] if has_sessions else []), *(["run"] if has_runs else [])]
    identity += [key for key in others if key not in identity]
    reserved = set(identity) | set(suffixes)
    table_columns = [c for c in participant_columns if c not in reserved]
    table_columns += [c for c in session_columns if c not in reserved and c not in table_columns]
    columns = [*identity, *suffixes, *table_columns]

    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for image, partners in rows:
        participant = image.participant
        session = f"ses-{image.entity('ses')}" if image.entity("ses") else ""
        values: dict[str, str] = {"participant_id": participant, "session_id": session}
        values["run"] = image.entity("run") or ""
        values.update({key: image.entity(key) or "" for key in others})
        values.update({s: f.path if f else "" for s, f in zip(suffixes, [image, *partners], strict=True)})
        extra = {**participants_rows.get(participant, {}), **sessions.get((participant, session), {})}
        values.update({k: v for k, v in extra.items() if k not in reserved})
        writer.writerow([values.get(c, "") for c in columns])

    if participants_rows:
        imaged = {image.participant for image, _ in rows}
        chosen = {f"sub-{label}" for label in wanted.get("sub", ())}  # a sub filter leaves the others out
        without = [p for p in participants_rows if p not in imaged and (not chosen or p in chosen)]
        if without:
            warnings.append(
                f"{len(without)} participant{'s' if len(without) > 1 else ''} of participants.tsv "
                f"without a {'+'.join(suffixes)} image: {_names(without)}."
            )
        unlisted = sorted({p for p in imaged if p not in participants_rows})
        if unlisted:
            warnings.append(
                f"{len(unlisted)} participant{'s' if len(unlisted) > 1 else ''} with images but no row "
                f"in participants.tsv (their columns from it are empty): {_names(unlisted)}."
            )
    for warning in warnings:
        warn_once(f"{root}: {warning}")
    return BidsTable(
        root=root,
        text=out.getvalue(),
        columns=tuple(columns),
        image_columns=tuple(suffixes),
        text_columns=tuple([*identity, *suffixes]),
        warnings=tuple(warnings),
    )


@functools.cache
def warn_once(message: str) -> None:
    """Log a warning once per process: evaluate reads a dataset twice, and says it once."""
    log.warning("%s", message)


def _value(file: BidsFile, key: str) -> str | None:
    return file.datatype or None if key == "datatype" else file.entity(key)


def _filter_text(filters: dict[str, set[str]]) -> list[str]:
    return [f"{key}={','.join(sorted(values))}" for key, values in filters.items()]


def _by_visit(files: Sequence[BidsFile]) -> dict[tuple[str, str | None, str | None], list[BidsFile]]:
    """Files by (participant, session, run): pairing a cohort is a look-up, not a search."""
    index: dict[tuple[str, str | None, str | None], list[BidsFile]] = defaultdict(list)
    for file in files:
        index[(file.participant, *file.visit)].append(file)
    return index


def _partner(
    image: BidsFile, visits: dict[tuple[str, str | None, str | None], list[BidsFile]]
) -> BidsFile | None:
    same = visits.get((image.participant, *image.visit), [])
    if len(same) == 1:
        return same[0]
    exact = [f for f in same if f.key == image.key]
    return exact[0] if len(exact) == 1 else None


def _participants_table(root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    path = root / "participants.tsv"
    if not path.is_file():
        return {}, []
    rows = _read_tsv(path)
    if rows and "participant_id" not in rows[0]:
        raise ManifestError(
            f"{path}: has no participant_id column (columns: {', '.join(rows[0])}).",
            "BIDS names the first column of participants.tsv participant_id (values sub-XXX).",
        )
    table = {_subject(row["participant_id"]): row for row in rows if row.get("participant_id")}
    columns = [c for c in (rows[0] if rows else {}) if c != "participant_id"]
    return {p: {k: v for k, v in row.items() if k != "participant_id"} for p, row in table.items()}, columns


def _sessions_tables(
    root: Path, participants: Iterable[str]
) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    sessions: dict[tuple[str, str], dict[str, str]] = {}
    columns: dict[str, None] = {}
    for participant in sorted(participants):
        path = root / participant / f"{participant}_sessions.tsv"
        if not path.is_file():
            continue
        for row in _read_tsv(path):
            if not row.get("session_id"):
                continue
            sessions[(participant, _session(row["session_id"]))] = {
                k: v for k, v in row.items() if k != "session_id"
            }
            columns.update(dict.fromkeys(k for k in row if k != "session_id"))
    return sessions, list(columns)


def dataset_digest(root: str | Path) -> str:
    """SHA-256 of what a run reads from a BIDS dataset: the image names and sizes, and its tables.

    A resumed run refuses a dataset whose images or tables changed since it started.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for file in scan_bids(root):
        digest.update(f"{file.path}\t{os.path.getsize(root / file.path)}\n".encode())
    for table in sorted([root / "participants.tsv", *root.glob("sub-*/sub-*_sessions.tsv")]):
        if table.is_file():
            digest.update(table.relative_to(root).as_posix().encode() + b"\n" + table.read_bytes())
    return digest.hexdigest()


def images_in_folder(
    folder: str | Path, suffixes: Sequence[str]
) -> list[tuple[str, tuple[Path, ...]]] | None:
    """The images of a BIDS folder (a dataset's, a subject's, a session's) for a model's suffixes.

    Returns (participant, one path per suffix) per image of the first suffix, paired with
    the others by participant, session and run; None when the folder does not hold an image
    of every suffix (then it is a plain folder of NIfTI files to its caller). An image
    without its partners is left out with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir() or not suffixes:
        return None
    files = scan_bids(folder)
    found = {f.suffix for f in files}
    if not all(s in found for s in suffixes):
        return None
    others = [_by_visit([f for f in files if f.suffix == s]) for s in suffixes[1:]]
    result: list[tuple[str, tuple[Path, ...]]] = []
    lacking: list[str] = []
    for image in (f for f in files if f.suffix == suffixes[0]):
        partners = [_partner(image, candidates) for candidates in others]
        if any(p is None for p in partners):
            lacking.append(image.path)
            continue
        paths = [image, *(p for p in partners if p is not None)]
        result.append((image.participant, tuple(folder / f.path for f in paths)))
    if lacking:
        log.warning(
            "%s: %d %s image(s) without a %s image of the same session and run left out: %s",
            folder,
            len(lacking),
            suffixes[0],
            "/".join(suffixes[1:]),
            _names(lacking),
        )
    return result


def manifest_text(manifest: Manifest, out: str | Path | None = None, *, absolute: bool = False) -> str:
    """A BIDS dataset's resolved manifest as TSV, its image paths relative to ``out``'s folder.

    Training from the written file gives the same rows, participants and labels as
    training from the dataset itself; ``absolute`` (or no ``out``: stdout) writes
    absolute paths instead.
    """
    from neurodl.io.manifest import looks_like_nifti_column

    frame = manifest.frame.copy()
    # Every column of paths (participants.tsv may hold some too) moves with the file.
    columns = [c for c in frame.columns if looks_like_nifti_column(frame[c])]
    start = None if absolute or out is None else Path(os.path.abspath(out)).parent
    for column in columns:
        frame[column] = [
            value
            if not isinstance(value, str) or not value
            else _written_path(Path(os.path.normpath(manifest.root / value)), start)
            for value in frame[column]
        ]
    return str(frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _written_path(path: Path, start: Path | None) -> str:
    if start is None:
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive (Windows): only an absolute path reaches it
        return path.as_posix()
