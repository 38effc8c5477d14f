"""What ``predict``-like commands accept: NIfTI files, folders of them, or a manifest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodl.errors import UsageError
from neurodl.io.bids import images_in_folder, is_bids_root
from neurodl.io.manifest import Manifest, load_manifest, participant_from_path
from neurodl.io.nifti import find_nifti_files, is_nifti_path

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class InputImage:
    """One image to process: its channel files and where it came from.

    Attributes:
        name: base name for outputs (``sub-001_T1w``), unique among the inputs.
        paths: one file per channel.
        participant: the manifest's participant; for a plain file its BIDS subject, else its stem.
        row: the manifest row (0-based), when read from a manifest.
        label: the manifest's label cell, when a label column was asked for.
    """

    name: str
    paths: tuple[Path, ...]
    participant: str | None = None
    row: int | None = None
    label: Any = None

    @property
    def where(self) -> str:
        return f"manifest row {self.row + 1}" if self.row is not None else ""


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count + 1}")
    return result


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8): the second of eight shards (1-based, as job arrays count)."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError as exc:
        raise UsageError(f"--shard '{text}' is not of the form I/N (e.g. 3/10).") from exc
    if n < 1 or not 1 <= i <= n:
        raise UsageError(
            f"--shard '{text}': I must be between 1 and N (e.g. 3/10).",
            "With SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT and an array 1-N.",
        )
    return i, n


def take_shard(images: list[InputImage], shard: str | None) -> list[InputImage]:
    """The images of one shard: every N-th input from the I-th, in input order.

    The shards of 1/N..N/N partition the inputs exactly; names are made unique
    before sharding, so outputs do not depend on the shard count.
    """
    if shard is None:
        return images
    i, n = parse_shard(shard)
    return images[i - 1 :: n]


def resolve_inputs(
    inputs: Sequence[Path],
    *,
    image_columns: Sequence[str],
    participant_column: str = "participant_id",
    label_column: str | None = None,
    shard: str | None = None,
    bids_filter: Sequence[str] = (),
) -> tuple[list[InputImage], Manifest | None]:
    """Turn the command's INPUTS into images.

    A single CSV/TSV is a manifest with the model's image columns (and the label
    column, if asked). Otherwise each input is a NIfTI file or a folder searched
    for them (in sorted order); that only works for single-channel models.
    ``shard`` ("I/N") keeps one shard of them, the same way for files, folders and
    manifests (see :func:`take_shard`).

    Raises:
        UsageError: no inputs, a multi-channel model given plain files, or a folder without NIfTI files.
        ManifestError: a manifest without the needed columns.
    """
    if not inputs:
        raise UsageError("no inputs given.", "Give NIfTI files, folders of them, or a manifest (CSV/TSV).")
    # A BIDS dataset root holding the model's suffixes (T1w) is a manifest too.
    tables = [
        p
        for p in inputs
        if p.suffix.lower() in TABLE_SUFFIXES
        or (is_bids_root(p) and images_in_folder(p, image_columns) is not None)
    ]
    if tables:
        if len(inputs) > 1:
            raise UsageError(
                f"{tables[0]}: a manifest must be the only input.",
                "Run once per manifest, or give image files only.",
            )
        manifest = load_manifest(
            tables[0],
            list(image_columns),
            label_column,
            participant_column,
            require_files=False,
            bids_filter=bids_filter,
        )
        names = _unique(
            [
                _stem(files[0]) if files and files[0] is not None else f"row-{i + 1}"
                for i, files in enumerate(manifest.image_files)
            ]
        )
        labels = manifest.frame[label_column].tolist() if label_column else [None] * len(manifest)
        images = [
            InputImage(
                name=names[i],
                paths=tuple(p for p in manifest.image_files[i] if p is not None),
                participant=manifest.participant_ids[i],
                row=i,
                label=labels[i],
            )
            for i in range(len(manifest))
        ]
        return take_shard(images, shard), manifest
    # A BIDS subject's (or session's) folder: its images of the model's suffixes, channels paired.
    in_bids = {path: images_in_folder(path, image_columns) for path in inputs if path.is_dir()}
    if in_bids and all(found is not None for found in in_bids.values()) and len(in_bids) == len(inputs):
        pairs = [pair for path in inputs for pair in in_bids[path] or []]
        names = _unique([_stem(paths[0]) for _, paths in pairs])
        images = [
            InputImage(name=n, paths=paths, participant=participant)
            for n, (participant, paths) in zip(names, pairs, strict=True)
        ]
        return take_shard(images, shard), None
    if len(image_columns) > 1:
        raise UsageError(
            f"this model takes {len(image_columns)} channels ({', '.join(image_columns)}); plain files give one.",
            f"Give a manifest (CSV/TSV) with the columns {', '.join(image_columns)}.",
        )
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            bids = in_bids.get(path)
            found = [p for _, paths in bids for p in paths] if bids is not None else find_nifti_files(path)
            if not found:
                raise UsageError(
                    f"{path}: folder holds no .nii/.nii.gz files.",
                    "Give NIfTI files, a folder of them, or a manifest.",
                )
            files += found
        else:
            files.append(path)  # missing or non-NIfTI files fail later, one by one, with their own message
    names = _unique([_stem(p) if is_nifti_path(p) else p.name for p in files])
    images = [
        InputImage(name=n, paths=(p,), participant=participant_of_file(p))
        for n, p in zip(names, files, strict=True)
    ]
    return take_shard(images, shard), None


def participant_of_file(path: Path) -> str:
    """The participant of a plain file: its BIDS subject (``sub-XX``), else the file's stem.

    One rule for every command's tables (``participant_id``), so rows of files not
    named the BIDS way still say which file they describe.

    Example:
        >>> participant_of_file(Path("scans/patient7_t1.nii.gz"))
        'patient7_t1'
    """
    return participant_from_path(path) or (_stem(path) if is_nifti_path(path) else path.name)
