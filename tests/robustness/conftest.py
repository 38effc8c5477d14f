"""A tiny valid cohort and one tiny trained run per task, made once for the robustness suite.

Tests only read these; a test that damages a run or a file copies it into its own ``tmp_path`` first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurodl.cli.main import main
from neurodl.data.phantom import generate_cohort
from neurodl_testing.robustness import TRAIN_ARGS


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


class TrainedRuns(dict):
    """One run directory per task, trained for one epoch on the cohort the first time a test asks for it.

    Lazy, so running one case of the suite trains only the task it needs.
    """

    def __init__(self, cohort: Path, root: Path) -> None:
        super().__init__()
        self.cohort, self.root = cohort, root

    def __missing__(self, task: str) -> Path:
        out = self.root / task
        code = main([task, "train", str(self.cohort), *TRAIN_ARGS[task], "--out", str(out)])
        assert code == 0, task
        self[task] = out
        return out

    def items(self):  # type: ignore[override]
        return [(task, self[task]) for task in TRAIN_ARGS]


@pytest.fixture(scope="session")
def runs(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRuns:
    """Run directories per task (``runs["segment"]``), each trained once, on first use."""
    return TrainedRuns(cohort, tmp_path_factory.mktemp("runs"))
