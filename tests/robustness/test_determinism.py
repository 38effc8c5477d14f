"""With ``--seed`` and ``--deterministic``, two CPU runs give the same weights and the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurodl_testing.robustness import TRAIN_ARGS

# The catalogue runs every case through every command: CI runs it all, `pytest -m 'not slow'` skips it.
pytestmark = pytest.mark.slow


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("task", ["biomarkers", "classify", "translate"])
def test_two_seeded_runs_are_identical(task: str, run_cli, cohort: Path, tmp_path: Path) -> None:
    args = [
        task,
        "train",
        cohort,
        *TRAIN_ARGS[task],
        "--epochs",
        "3",
        "--seed",
        "7",
        "--deterministic",
        "--device",
        "cpu",
    ]
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        result = run_cli(*args, "--out", out)
        assert result.exit_code == 0, result.output

    files = sorted(path.name for path in first.glob("*.safetensors"))  # translate: both GAN networks
    assert files == sorted(path.name for path in second.glob("*.safetensors"))
    for file in files:
        weights = [load_file(str(run / file)) for run in (first, second)]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            assert torch.equal(weights[0][name], weights[1][name]), f"{file}: {name}"
    assert _metrics(first) == _metrics(second)
    timings = ["seconds", "data_wait"]  # every other column of the history must match
    history = [
        pd.read_csv(run / "history.csv").drop(columns=timings, errors="ignore") for run in (first, second)
    ]
    pd.testing.assert_frame_equal(*history)
    assert json.loads((first / "splits.json").read_text()) == json.loads((second / "splits.json").read_text())


def test_another_seed_gives_other_weights(run_cli, cohort: Path, tmp_path: Path) -> None:
    """The comparison above can fail: the seed does reach the initialisation."""
    runs = []
    for seed in ("7", "8"):
        out = tmp_path / seed
        result = run_cli(
            "biomarkers", "train", cohort, *TRAIN_ARGS["biomarkers"], "--seed", seed, "--out", out
        )
        assert result.exit_code == 0, result.output
        runs.append(load_file(str(out / "model.safetensors")))
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
