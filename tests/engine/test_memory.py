"""The memory of one training step is estimated before anything is allocated; an impossible step is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurodl.config import TrainOptions
from neurodl.data.phantom import generate_cohort
from neurodl.engine import memory
from neurodl.errors import UsageError
from neurodl.models import create_model


def _cnn():
    return create_model("classify", "cnn", in_channels=1, out_features=1, depth=2, width=4, dropout=0.0)


def test_activations_grow_with_the_batch_and_the_input():
    small = memory.estimate_step(_cnn, (1, 16, 16, 16), TrainOptions(batch_size=2))
    batch = memory.estimate_step(_cnn, (1, 16, 16, 16), TrainOptions(batch_size=8))
    larger = memory.estimate_step(_cnn, (1, 32, 32, 32), TrainOptions(batch_size=2))
    assert batch.activations == 4 * small.activations
    assert 7 * small.activations <= larger.activations <= 9 * small.activations  # 8x the voxels
    assert small.weights == batch.weights > 0


def test_a_step_larger_than_the_free_memory_is_refused_with_the_numbers_and_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 700 * 2**20)
    with pytest.raises(UsageError) as caught:
        memory.require_step_fits(
            _cnn, (1, 64, 64, 64), TrainOptions(batch_size=64, device="cpu"), model_name="cnn"
        )
    text = str(caught.value)
    assert "cnn on 64x64x64 inputs with batch 64" in text and "available RAM is 700.0 MiB" in text
    assert "--batch-size" in text and "--size" in text


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=4, size=24, seed=3)
    return root / "participants.tsv"


@pytest.mark.slow
def test_densenet121_at_256_cubed_with_batch_32_is_refused_before_any_allocation(run_cli, cohort, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "classify", "train", cohort, "--model", "densenet121", "--size", "256", "--spacing", "1",
        "--batch-size", "32", "--device", "cpu", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "densenet121 on 256x256x256 inputs with batch 32 needs about" in result.stderr
    assert "GiB" in result.stderr and "--batch-size" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was decoded or trained: no preprocessed volume, no weights.
    assert not list(out.rglob("*.safetensors"))
