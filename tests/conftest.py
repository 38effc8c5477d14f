"""Shared fixtures: run the real CLI and capture what a user would see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurodl.cli.main import main


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Call ``neurodl ARGS...`` in-process; returns exit code, stdout and stderr."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(int(code), captured.out, captured.err)

    return run


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
