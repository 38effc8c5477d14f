"""Shared pieces of the robustness suite: tiny training commands, bad files, and the checks every failure must pass."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

# Cheapest settings that still exercise each task end to end (16^3 volumes, one epoch).
TRAIN_ARGS: dict[str, list[str]] = {
    "biomarkers": [
        "--target", "diagnosis", "--features", "csf_volume_ml,brain_metabolism",
        "--epochs", "1", "--batch-size", "2", "--quiet",
    ],
    "classify": [
        "--image", "t1", "--label", "diagnosis", "--model", "cnn", "--depth", "1", "--width", "2",
        "--size", "16", "--augment", "none", "--epochs", "1", "--batch-size", "2", "--quiet",
    ],
    "segment": [
        "--image", "t1", "--mask", "dseg", "--model", "unet", "--patch", "16", "--samples-per-image", "1",
        "--augment", "none", "--epochs", "1", "--batch-size", "2", "--quiet",
    ],
    "autoencode": [
        "--image", "t1", "--size", "16", "--latent-dim", "2", "--width", "2", "--augment", "none",
        "--epochs", "1", "--batch-size", "2", "--quiet",
    ],
    "translate": [
        "--source", "t1", "--target", "t2", "--epochs", "1", "--width", "4", "--spacing", "1.5",
        "--batch-size", "16", "--quiet",
    ],
}  # fmt: skip


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders`` (unreadable files by their mode), keyed by path."""
    hashes = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                hashes[str(path)] = (
                    digest(path) if os.access(path, os.R_OK) else f"mode {path.stat().st_mode}"
                )
    return hashes


def stray_files(*folders: Path) -> list[Path]:
    """Temporary files an atomic write left behind (``.NAME.XXXX.tmp...``)."""
    return [path for folder in folders for path in folder.rglob(".*") if ".tmp" in path.name]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@dataclass(frozen=True)
class Grid:
    """Where a bad image is written, and on which grid (the row it replaces, in a manifest)."""

    folder: Path
    shape: tuple[int, int, int] = (16, 16, 16)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    def volume(self, extra: tuple[int, ...] = ()) -> np.ndarray:
        return np.random.default_rng(0).normal(100, 20, size=self.shape + extra).astype(np.float32)

    def write(self, name: str, data: np.ndarray) -> Path:
        return write_nifti(self.folder / name, data, self.affine)


def _missing(grid: Grid) -> Path:
    return grid.folder / "missing_T1w.nii.gz"


def _unreadable(grid: Grid) -> Path:
    path = grid.write("unreadable_T1w.nii.gz", grid.volume())
    path.chmod(0)
    return path


def _zero_bytes(grid: Grid) -> Path:
    path = grid.folder / "empty_T1w.nii.gz"
    path.write_bytes(b"")
    return path


def _truncated(grid: Grid) -> Path:
    path = grid.write("truncated_T1w.nii.gz", grid.volume())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _garbage(grid: Grid) -> Path:
    path = grid.folder / "garbage_T1w.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def _gzipped_text(grid: Grid) -> Path:
    path = grid.folder / "text_T1w.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image\n" * 40))
    return path


def _wrong_extension(grid: Grid) -> Path:
    return grid.write("scan_T1w.nii.gz", grid.volume()).rename(grid.folder / "scan_T1w.img")


def _two_d(grid: Grid) -> Path:
    return grid.write("slice_T1w.nii.gz", grid.volume()[..., 0])


def _four_d(grid: Grid) -> Path:
    return grid.write("series_T1w.nii.gz", grid.volume((3,)))


def _five_d(grid: Grid) -> Path:
    return grid.write("five_T1w.nii.gz", grid.volume((1, 3)))


def _nan(grid: Grid) -> Path:
    data = grid.volume()
    data[4:6, 4:6, 4:6] = np.nan
    return grid.write("nan_T1w.nii.gz", data)


def _inf(grid: Grid) -> Path:
    data = grid.volume()
    data[8, 8, 8] = np.inf
    return grid.write("inf_T1w.nii.gz", data)


def _constant(grid: Grid) -> Path:
    return grid.write("constant_T1w.nii.gz", np.full(grid.shape, 7.0, dtype=np.float32))


def _tiny_file_declaring(shape: tuple[int, ...]) -> bytes:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4))
    image.header.set_data_shape(shape)
    return image.header.binaryblock + b"\x00" * 4 + np.zeros(8, np.float32).tobytes()


def _huge(grid: Grid) -> Path:
    """A 384-byte file whose header declares 30000^3 float32 voxels (108 TB)."""
    path = grid.folder / "huge_T1w.nii"
    path.write_bytes(_tiny_file_declaring((30000, 30000, 30000)))
    return path


def _huge_gz(grid: Grid) -> Path:
    """A tiny .nii.gz declaring 1100^3 float32 voxels (5.3 GB, beyond what the gzip trailer can tell)."""
    path = grid.folder / "huge_T1w.nii.gz"
    path.write_bytes(gzip.compress(_tiny_file_declaring((1100, 1100, 1100))))
    return path


BAD_IMAGES: dict[str, Callable[[Grid], Path]] = {
    "missing": _missing,
    "unreadable": _unreadable,
    "zero-bytes": _zero_bytes,
    "truncated-gz": _truncated,
    "garbage-bytes": _garbage,
    "gzipped-text": _gzipped_text,
    "wrong-extension": _wrong_extension,
    "2d": _two_d,
    "4d": _four_d,
    "5d": _five_d,
    "nan-voxels": _nan,
    "inf-voxels": _inf,
    "constant": _constant,
    "huge-dims": _huge,
    "huge-dims-gz": _huge_gz,
}


def grid_of(path: Path, folder: Path) -> Grid:
    """A grid like ``path``'s (so a bad image replacing it still matches its mask), writing in ``folder``."""
    image = nib.load(str(path))
    return Grid(folder, tuple(int(s) for s in image.shape[:3]), image.affine)  # type: ignore[arg-type]


def replace_cell(manifest: Path, out: Path, column: str, row: int, value: str) -> Path:
    """Copy ``manifest`` to ``out`` with absolute image paths, and one cell replaced."""
    import pandas as pd

    frame = pd.read_csv(manifest, sep="\t", dtype=str)
    for name in ("t1", "t2", "dseg"):
        frame[name] = [str((manifest.parent / v).resolve()) for v in frame[name]]
    frame.loc[row, column] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, sep="\t", index=False)
    return out
