"""Engine switches that are off by default: the data-wait share, torch.compile, channels-last 3D."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from neurodl.config import TrainOptions
from neurodl.engine import TensorBatches, fit
from neurodl.io.state import load_state
from neurodl_testing.engine import Regression, line_data


class SlowBatches:
    """Batches that take a while to arrive, like images decoded on the fly."""

    def __init__(self, batches: TensorBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            time.sleep(0.02)
            yield batch


def test_every_epoch_records_the_share_of_time_spent_waiting_for_data():
    x, y = line_data(n=32)
    options = TrainOptions(epochs=2, batch_size=8, patience=0, device="cpu")
    fast = fit(Regression(nn.Linear(1, 1)), TensorBatches(x, y, batch_size=8), None, options)
    slow = fit(Regression(nn.Linear(1, 1)), SlowBatches(TensorBatches(x, y, batch_size=8)), None, options)
    for record in fast.history + slow.history:
        assert 0.0 <= record["data_wait"] <= 1.0
    # A linear model's step takes microseconds: the sleeping loader dominates.
    assert min(r["data_wait"] for r in slow.history) > 0.5


class Volumes:
    """A tiny 3D classification-like regression: (B, 1, 8, 8, 8) volumes to one number."""

    default_monitor = "val_loss"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 1)
        )

    def training_step(self, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(self.model(x).squeeze(1), y)}

    def validation_step(self, batch):
        x, y = batch
        return {"output": self.model(x).squeeze(1), "target": y}

    def validation_metrics(self, outputs):
        return {"loss": float(nn.functional.mse_loss(outputs["output"], outputs["target"]))}


def _volumes() -> tuple[TensorBatches, TensorBatches]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 8, 8, 8, generator=g)
    y = x.mean(dim=(1, 2, 3, 4)) * 3
    return TensorBatches(x[:8], y[:8], batch_size=4, shuffle=True), TensorBatches(x[8:], y[8:], batch_size=4)


def test_channels_last_trains_to_the_same_weights_and_saves_plain_checkpoints(tmp_path: Path):
    options = TrainOptions(epochs=2, batch_size=4, patience=0, device="cpu")
    reference, fast = Volumes(), Volumes()
    fit(reference, *_volumes(), options)
    fit(fast, *_volumes(), replace(options, channels_last=True), checkpoint=tmp_path / "c")
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    for (name, a), (_, b) in zip(
        reference.model.state_dict().items(), fast.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert load_state(tmp_path / "c")["model"].keys() == reference.model.state_dict().keys()


@pytest.mark.slow
def test_compiled_model_trains_and_is_plain_again_after_the_fit(tmp_path: Path):
    x, y = line_data(n=16)
    options = TrainOptions(epochs=2, batch_size=8, patience=0, device="cpu")
    reference, compiled = Regression(nn.Linear(1, 1)), Regression(nn.Linear(1, 1))
    compiled.model.load_state_dict(reference.model.state_dict())
    fit(reference, TensorBatches(x, y, batch_size=8), TensorBatches(x, y, batch_size=8), options)
    result = fit(
        compiled,
        TensorBatches(x, y, batch_size=8),
        TensorBatches(x, y, batch_size=8),
        replace(options, compile=True),
        checkpoint=tmp_path / "c",
    )
    assert type(compiled.model) is nn.Linear
    assert result.epochs_run == 2
    for (name, a), (_, b) in zip(
        reference.model.state_dict().items(), compiled.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert load_state(tmp_path / "c")["model"].keys() == reference.model.state_dict().keys()
