"""A tiny valid cohort and one tiny trained run per task, made once for the robustness suite.

Tests only read these; a test that damages a run or a file copies it into its own ``tmp_path`` first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurodl.cli.main import main
from neurodl.data.phantom import generate_cohort
from robustness._support import TRAIN_ARGS


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny 3D convolutions on a shared 2-core machine run faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``participants.tsv`` of 8 phantom subjects, 16^3 voxels (some with 1.5 mm slices)."""
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=8, size=16, seed=1)
    return root / "participants.tsv"


@pytest.fixture(scope="session")
def runs(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained run directory per task, trained for one epoch on ``cohort``."""
    root = tmp_path_factory.mktemp("runs")
    trained = {}
    for task, args in TRAIN_ARGS.items():
        out = root / task
        code = main([task, "train", str(cohort), *args, "--out", str(out)])
        assert code == 0, task
        trained[task] = out
    return trained
