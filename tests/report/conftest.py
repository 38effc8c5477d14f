"""Tiny runs of several tasks, trained once for every report and compare test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurodl.data.phantom import generate_cohort
from neurodl_testing import DX, SAMPLE, train


@pytest.fixture(scope="package")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="package")
def dx_runs(runs: Path) -> list[Path]:
    """Two diagnosis MLPs that differ only in the learning rate."""
    paths = [runs / "lr-0.01", runs / "lr-0.1"]
    for path, lr in zip(paths, ("0.01", "0.1"), strict=True):
        train("biomarkers", "train", SAMPLE, *DX, "--epochs", "3", "--lr", lr, "--out", path)
    return paths


@pytest.fixture(scope="package")
def severity_cv_run(runs: Path) -> Path:
    """A regression cross-validated over 3 folds."""
    path = runs / "severity-cv"
    train(
        "biomarkers", "train", SAMPLE, "--target", "severity", "--features", "csf_volume_ml",
        "--cv", "3", "--epochs", "3", "--quiet", "--out", path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="package")
def ae_run(runs: Path) -> Path:
    """An autoencoder on 16³ phantoms with held-out test participants."""
    cohort = runs / "cohort"
    generate_cohort(cohort, n=8, size=24, seed=3)
    path = runs / "ae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 3D convolutions: one thread beats contended ones on 2 cores
    try:
        train(
            "train-ae", cohort / "participants.tsv", "--image", "t1", "--size", "16", "--spacing", "1.5",
            "--latent-dim", "4", "--width", "4", "--epochs", "2", "--test-fraction", "0.25", "--quiet",
            "--out", path,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return path
