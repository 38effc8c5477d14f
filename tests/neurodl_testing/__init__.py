"""What neurodl's tests share: tiny NIfTI files, affines, training commands and launchers.

Imported as ``neurodl_testing`` (``pytest``'s ``pythonpath`` puts ``tests/`` on the path), a name no
other installed package uses, unlike ``tests`` or ``conftest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

# The committed sample cohort, and the biomarkers the README trains on.
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "participants.tsv"
DX = ["--target", "diagnosis", "--features", "csf_volume_ml,brain_metabolism", "--quiet"]


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def make_nifti(
    path: Path,
    data: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    shape: tuple[int, ...] = (16, 16, 16),
    dtype: type = np.float32,
    seed: int = 0,
) -> Path:
    """Write a small NIfTI file (random data unless given) and return its path."""
    if data is None:
        data = np.random.default_rng(seed).normal(100, 20, size=shape).astype(dtype)
    if affine is None:
        affine = np.eye(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def las_anisotropic_affine() -> np.ndarray:
    """A non-RAS (LAS), anisotropic (1 x 1.5 x 3 mm) affine with an offset origin."""
    affine = np.diag([-1.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [40.0, -60.0, -20.0]
    return affine


def train(*args: str | Path) -> None:
    """Run ``neurodl ARGS...`` in-process and fail the test unless it exits 0."""
    from neurodl.cli.main import main  # the CLI imports torch only when a command runs

    code = main([str(a) for a in args])
    assert code == 0, f"training failed: {args}"
