"""Check a dataset before training: files, shapes, values, labels and participants, in one pass.

:func:`check_manifest` opens every image of a manifest and collects every problem it
finds, rather than stopping at the first, so that one run of ``neurodl check`` gives
the whole list to fix. Problems make a dataset unusable (exit 2); warnings and notes
are things a user should know (a rare class, participants with several sessions).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neurodl.errors import ImageError
from neurodl.io.manifest import Manifest, is_empty_cell
from neurodl.io.nifti import finite_values, load_volume, read_image, require_3d_shape
from neurodl.io.tables import format_rows

# Integer labels are class codes when they run without gaps from -1, 0 or 1 and number at most
# MAX_CLASSES (0/1, 0..3, 1..5); other numbers (an age, a score such as 0, 3, 7, 12) are a
# continuous target.
MAX_CLASSES = 20
# Channels whose affines differ by less than this (mm, or unitless for rotations) share a grid.
_GRID_TOLERANCE = 1e-3
_MASK_VALUES_SHOWN = 50

LabelKind = Literal["classes", "continuous", "mask"]
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about a manifest, located as precisely as possible.

    Attributes:
        message: what is wrong.
        row: data row, 1 = the first row after the header (None: the whole manifest).
        column: the column concerned, if one.
        file: the image file concerned, if one.
        fix: what to do about it.
    """

    message: str
    row: int | None = None
    column: str | None = None
    file: str | None = None
    fix: str | None = None

    def where(self) -> str:
        """``row 3, column 't1'`` (empty for a manifest-wide problem)."""
        parts = []
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckReport:
    """What :func:`check_manifest` found: problems, warnings, notes and a summary.

    The summary counters map a value (a shape such as ``"182x218x182"``, a spacing such
    as ``"1x1x1"``, an orientation code, a dtype, a class) to how many images (or rows,
    for classes) have it.
    """

    manifest: str
    root: str
    rows: int
    image_columns: list[str]
    image_columns_detected: bool
    label_column: str | None
    participant_column: str
    participant_source: str
    participants: int
    images: int = 0
    images_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shapes: dict[str, int] = field(default_factory=dict)
    spacings: dict[str, int] = field(default_factory=dict)
    orientations: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    label_kind: LabelKind | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    label_range: dict[str, float] | None = None
    mask_values: list[float] = field(default_factory=list)
    participants_with_several_rows: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing prevents training on this manifest."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class _ImageFacts:
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    orientation: str
    dtype: str
    affine: np.ndarray
    n_nan: int
    n_inf: int
    minimum: float | None
    maximum: float | None
    integral: bool
    values: tuple[float, ...] | None
    digest: str | None


@dataclass(frozen=True)
class _Cell:
    column: str
    file: Path
    is_mask: bool
    facts: _ImageFacts | None = None
    problem: Problem | None = None


def check_manifest(
    manifest: Manifest, *, progress: ProgressCallback | None = None, workers: int | None = None
) -> CheckReport:
    """Open every image of ``manifest`` and report every problem found.

    Checks, per image: readable NIfTI, 3D, no NaN/Inf voxels, not constant; per row: all
    channels (and the mask) share one grid; per manifest: empty cells and missing files,
    label classes (one class is a problem, a class with fewer than 2 rows a warning),
    participants with several rows, the same file or identical voxels in several rows.

    Labels: text labels are classes; numeric labels are classes when they are integer codes
    without gaps starting at -1, 0 or 1 (0/1, 0..3), otherwise a continuous target (an age, a
    severity score). A label
    column of NIfTI paths holds segmentation masks, checked like images but allowed to be
    empty (all zero).

    Args:
        manifest: loaded with ``require_files=False`` so that missing files are reported
            here with everything else.
        progress: called with (images done, images in all) as images are read.
        workers: threads reading images (default: up to 4; decompression releases the GIL).

    Example:
        >>> report = check_manifest(load_manifest("participants.tsv", ["t1"], "diagnosis",
        ...                                       require_files=False))
        >>> report.ok, report.label_counts
        (True, {'AD': 10, 'CN': 10})
    """
    report = CheckReport(
        manifest=str(manifest.path),
        root=str(manifest.root),
        rows=len(manifest),
        image_columns=list(manifest.image_columns),
        image_columns_detected=manifest.image_columns_detected,
        label_column=manifest.label_column,
        participant_column=manifest.participant_column,
        participant_source=manifest.participant_source,
        participants=len(set(manifest.participant_ids)),
    )
    for issue in manifest.issues:
        report.problems.append(
            Problem(
                issue.message,
                row=issue.row + 1,
                column=issue.column,
                file=None if issue.file is None else str(issue.file),
                fix=(
                    f"Paths are relative to the manifest's folder ({manifest.root}); "
                    "correct the path or add the file."
                    if issue.file is not None
                    else "Fill the cell or remove the row."
                ),
            )
        )

    unusable = {(issue.row, issue.column) for issue in manifest.issues}
    jobs = [_row_jobs(manifest, row, unusable) for row in range(len(manifest))]
    report.images = sum(len(job) for job in jobs)
    rows = _read_rows(jobs, progress, report.images, workers)

    shapes: Counter[str] = Counter()
    spacings: Counter[str] = Counter()
    orientations: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    mask_values: set[float] = set()
    digests: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for row, cells in enumerate(rows):
        for cell in cells:
            if cell.problem is not None:
                report.problems.append(cell.problem)
                continue
            facts = cell.facts
            assert facts is not None
            report.images_read += 1
            _judge_values(report, row, cell)
            if cell.is_mask:
                mask_values.update(facts.values or ())
                continue
            shapes[_format_shape(facts.shape)] += 1
            spacings[_format_spacing(facts.spacing)] += 1
            orientations[facts.orientation] += 1
            dtypes[facts.dtype] += 1
            if facts.digest is not None:
                digests[facts.digest].append((row, cell.file))
        _judge_grid(report, row, cells)

    report.shapes = dict(shapes.most_common())
    report.spacings = dict(spacings.most_common())
    report.orientations = dict(orientations.most_common())
    report.dtypes = dict(dtypes.most_common())
    if len(shapes) > 1:
        report.notes.append(
            f"Images come in {len(shapes)} shapes; training resamples and crops/pads them to "
            "one size, as recorded in the run's preprocessing.json."
        )
    # Row order reads best: a user fixes the manifest from top to bottom.
    report.problems.sort(key=lambda p: (p.row or 0, p.column or ""))
    _judge_duplicates(report, manifest, digests)
    _judge_participants(report, manifest)
    if manifest.label_column is not None:
        if manifest.label_is_image:
            report.label_kind = "mask"
            report.mask_values = sorted(mask_values)[:_MASK_VALUES_SHOWN]
        else:
            _judge_labels(report, manifest)
    return report


def _row_jobs(manifest: Manifest, row: int, unusable: set[tuple[int, str]]) -> list[_Cell]:
    cells = [
        _Cell(column, path, is_mask=False)
        for column, path in zip(manifest.image_columns, manifest.image_files[row], strict=True)
        if path is not None and (row, column) not in unusable
    ]
    mask = manifest.label_path(row)
    label = manifest.label_column
    if mask is not None and label is not None and (row, label) not in unusable:
        cells.append(_Cell(label, mask, is_mask=True))
    return cells


def _read_rows(
    jobs: list[list[_Cell]], progress: ProgressCallback | None, total: int, workers: int | None
) -> list[list[_Cell]]:
    workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    if progress is not None:
        progress(0, total)
    results: list[list[_Cell]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for row, cells in enumerate(pool.map(_read_row, range(len(jobs)), jobs)):
            results.append(cells)
            done += len(cells)
            if progress is not None and jobs[row]:
                progress(done, total)
    finally:
        # On Ctrl-C, drop the rows not started yet instead of reading them all first.
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _read_row(row: int, cells: list[_Cell]) -> list[_Cell]:
    out = []
    for cell in cells:
        try:
            facts = _inspect(cell.file, is_mask=cell.is_mask)
        except ImageError as exc:
            message = exc.message.removeprefix(f"{cell.file}: ")
            problem = Problem(message, row + 1, cell.column, str(cell.file), exc.fix)
            out.append(_Cell(cell.column, cell.file, cell.is_mask, problem=problem))
        except OSError as exc:  # permission denied, a file vanishing during the check
            problem = Problem(
                f"cannot be read ({exc.strerror or exc}).",
                row + 1,
                cell.column,
                str(cell.file),
                "Check the file's permissions and that it is still there.",
            )
            out.append(_Cell(cell.column, cell.file, cell.is_mask, problem=problem))
        else:
            out.append(_Cell(cell.column, cell.file, cell.is_mask, facts=facts))
    return out


def _inspect(path: Path, *, is_mask: bool) -> _ImageFacts:
    header = read_image(path).header
    shape = tuple(int(s) for s in header.get_data_shape())
    # Decide on the header alone, so a 4D series is refused without decompressing it; the message
    # is the one every command gives for such a file.
    require_3d_shape(path, shape)
    volume = load_volume(path, dtype=None, require_3d=True)
    data = volume.data
    finite, n_nan, n_inf = finite_values(data)
    minimum = float(finite.min()) if finite.size else None
    maximum = float(finite.max()) if finite.size else None
    integral = data.dtype.kind in "iub" or (is_mask and bool(np.all(np.equal(np.mod(finite, 1), 0))))
    values = _distinct_values(finite) if is_mask and integral else None
    constant = minimum is not None and minimum == maximum
    digest = None
    if not constant and not is_mask:
        contiguous = np.ascontiguousarray(data)
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(f"{contiguous.shape}{contiguous.dtype}".encode())
        hasher.update(contiguous.view(np.uint8).ravel().data)
        digest = hasher.hexdigest()
    return _ImageFacts(
        shape=volume.shape,
        spacing=volume.spacing,
        orientation=volume.orientation,
        dtype=str(volume.header.get_data_dtype()),
        affine=volume.affine,
        n_nan=n_nan,
        n_inf=n_inf,
        minimum=minimum,
        maximum=maximum,
        integral=integral,
        values=values,
        digest=digest,
    )


def _distinct_values(data: np.ndarray) -> tuple[float, ...]:
    if data.size == 0:
        return ()
    low, high = float(data.min()), float(data.max())
    if low >= 0 and high < 65536:
        # Far faster than np.unique's sort on a whole volume.
        counts = np.bincount(data.astype(np.int64, copy=False).ravel(), minlength=1)
        return tuple(float(v) for v in np.flatnonzero(counts))
    return tuple(float(v) for v in np.unique(data)[: _MASK_VALUES_SHOWN + 1])


def _judge_values(report: CheckReport, row: int, cell: _Cell) -> None:
    facts = cell.facts
    assert facts is not None

    def at_cell(message: str, fix: str | None = None) -> Problem:
        return Problem(message, row=row + 1, column=cell.column, file=str(cell.file), fix=fix)

    if facts.n_nan or facts.n_inf:
        report.problems.append(
            at_cell(
                f"has {facts.n_nan} NaN and {facts.n_inf} Inf voxels.",
                "Replace them (e.g. `fslmaths in -nan out`) or re-run the step that made them.",
            )
        )
    if facts.minimum is None:
        return
    if cell.is_mask:
        if not facts.integral:
            report.problems.append(
                at_cell(
                    "mask has non-integer values; a segmentation needs integer labels.",
                    "Threshold or round it (a probability map is not a label map).",
                )
            )
        elif facts.minimum == facts.maximum:
            report.warnings.append(at_cell(f"mask is empty: every voxel is {facts.minimum:g}."))
        return
    if facts.minimum == facts.maximum:
        report.problems.append(
            at_cell(
                f"is constant: every voxel is {facts.minimum:g}.",
                "The image is blank; re-export it or remove the row.",
            )
        )


def _judge_grid(report: CheckReport, row: int, cells: list[_Cell]) -> None:
    readable = [c for c in cells if c.facts is not None]
    if len(readable) < 2:
        return
    first = readable[0]
    assert first.facts is not None
    shapes = {c.column: c.facts.shape for c in readable if c.facts is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{col} {_format_shape(shape)}" for col, shape in shapes.items())
        report.problems.append(
            Problem(
                f"channels have different shapes: {listed}.",
                row=row + 1,
                fix="Resample every channel (and the mask) onto one grid, e.g. register them "
                "to the first channel with ANTs or FSL flirt.",
            )
        )
        return
    off = [
        c
        for c in readable[1:]
        if c.facts is not None and not np.allclose(c.facts.affine, first.facts.affine, atol=_GRID_TOLERANCE)
    ]
    if off:
        listed = "; ".join(_describe_grid(c) for c in [first, *off])
        report.problems.append(
            Problem(
                f"channels share a shape but not a grid (affines differ): {listed}.",
                row=row + 1,
                fix="Resample every channel (and the mask) onto the first channel's grid, so "
                "that voxel (i, j, k) is the same place in each.",
            )
        )


def _judge_duplicates(
    report: CheckReport, manifest: Manifest, digests: dict[str, list[tuple[int, Path]]]
) -> None:
    by_file: dict[Path, list[int]] = defaultdict(list)
    for row, row_files in enumerate(manifest.image_files):
        for path in dict.fromkeys(row_files):
            if path is not None:
                by_file[path].append(row)
    ids = manifest.participant_ids
    for path, rows in by_file.items():
        if len(rows) > 1:
            report.warnings.append(
                Problem(
                    f"the same file is in rows {format_rows(rows)}" + _leak_suffix(ids, rows),
                    file=str(path),
                )
            )
    for entries in digests.values():
        copies = sorted({path for _, path in entries})
        if len(copies) > 1:
            rows = sorted({row for row, _ in entries})
            names = ", ".join(path.name for path in copies[:5])
            report.warnings.append(
                Problem(
                    f"{len(copies)} files hold identical voxels ({names}; rows {format_rows(rows)})"
                    + _leak_suffix(ids, rows),
                    file=str(copies[0]),
                )
            )


def _leak_suffix(ids: tuple[str, ...], rows: list[int]) -> str:
    people = sorted({ids[r] for r in rows})
    if len(people) > 1:
        return (
            f", under different participants ({', '.join(people[:5])}): a split could put one "
            "copy in training and another in test (leakage)."
        )
    return "."


def _judge_participants(report: CheckReport, manifest: Manifest) -> None:
    counts = Counter(manifest.participant_ids)
    several = {p: n for p, n in counts.items() if n > 1}
    report.participants_with_several_rows = dict(sorted(several.items()))
    if manifest.participant_source == "filename":
        report.notes.append(
            f"No '{manifest.participant_column}' column: participants were read from the "
            "sub-XXX in the image file names."
        )
    elif manifest.participant_source == "row":
        report.notes.append(
            f"No '{manifest.participant_column}' column and no sub-XXX in the file names: each "
            "row counts as its own participant. If several rows are the same person, add a "
            "participant column (--participant) so splits keep them together."
        )
    if several:
        example = ", ".join(f"{p} ({n} rows)" for p, n in list(several.items())[:3])
        report.notes.append(
            f"{len(several)} participant{'s have' if len(several) > 1 else ' has'} several rows "
            f"(e.g. {example}); splits keep all rows of a participant on the same side."
        )


def _judge_labels(report: CheckReport, manifest: Manifest) -> None:
    import pandas as pd  # heavy: only when labels are checked

    column = manifest.label_column
    assert column is not None
    values = manifest.frame[column]
    present = values[[not is_empty_cell(v) for v in values]]
    if present.empty:
        report.problems.append(Problem(f"every label in column '{column}' is empty.", column=column))
        return
    numbers = pd.to_numeric(present, errors="coerce")
    numeric = bool(numbers.notna().all())
    if numeric and not _looks_like_class_codes(numbers.to_numpy(dtype=float)):
        report.label_kind = "continuous"
        report.label_range = {
            "min": float(numbers.min()),
            "max": float(numbers.max()),
            "mean": float(numbers.mean()),
        }
        if numbers.nunique() < 2:
            report.problems.append(
                Problem(
                    f"label column '{column}' has one value ({numbers.iloc[0]:g}) in every row.",
                    column=column,
                    fix="A model cannot learn from a constant target; check the column.",
                )
            )
        return
    report.label_kind = "classes"
    names = numbers.astype(int).astype(str) if numeric else present.astype(str).str.strip()
    counts = Counter(names)
    report.label_counts = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    if len(counts) == 1:
        only, n = next(iter(counts.items()))
        report.problems.append(
            Problem(
                f"label column '{column}' has a single class ('{only}', {n} rows); a classifier "
                "needs at least two.",
                column=column,
                fix="Add rows of the other class(es), or check that --label names the column.",
            )
        )
    rare = [name for name, n in counts.items() if n < 2]
    if rare and len(counts) > 1:
        names_rare = ", ".join(f"'{name}'" for name in rare[:10]) + (" ..." if len(rare) > 10 else "")
        report.warnings.append(
            Problem(
                f"class{'es' if len(rare) > 1 else ''} {names_rare} "
                f"{'have' if len(rare) > 1 else 'has'} 1 row: a stratified split cannot put "
                f"{'them' if len(rare) > 1 else 'it'} on both sides, and one example cannot be learned.",
                column=column,
                fix="Add rows, merge rare classes, or remove them"
                + (" (if this column is a score, train a regression on it)." if numeric else "."),
            )
        )
    by_participant: dict[str, set[str]] = defaultdict(set)
    for index, name in names.items():
        by_participant[manifest.participant_ids[int(index)]].add(name)
    mixed = sorted(p for p, classes in by_participant.items() if len(classes) > 1)
    if mixed and manifest.participant_source != "row":
        report.warnings.append(
            Problem(
                f"{len(mixed)} participant{'s have' if len(mixed) > 1 else ' has'} rows with "
                f"different labels (e.g. {', '.join(mixed[:3])}).",
                column=column,
                fix="Fine for a label that changes over sessions; otherwise check the column.",
            )
        )


def _looks_like_class_codes(values: np.ndarray) -> bool:
    if not np.all(np.mod(values, 1) == 0):
        return False
    distinct = np.unique(values)
    low, high = distinct.min(), distinct.max()
    contiguous = high - low + 1 == len(distinct)
    if set(distinct.tolist()) == {-1.0, 1.0}:
        return True
    return bool(contiguous and low in (-1, 0, 1) and len(distinct) <= MAX_CLASSES)


def _describe_grid(cell: _Cell) -> str:
    facts = cell.facts
    assert facts is not None
    origin = ", ".join(f"{v:.4g}" for v in facts.affine[:3, 3])
    return f"{cell.column} {facts.orientation} {_format_spacing(facts.spacing)} mm origin ({origin})"


def _format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _format_spacing(spacing: tuple[float, ...]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)
