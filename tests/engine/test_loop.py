"""The training engine on tiny problems: gradient descent, optimisers, early stopping, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from neurodl.config import OPTIMIZERS, TrainOptions
from neurodl.engine import Callback, TensorBatches, fit
from neurodl.errors import Interrupted, RunDirectoryError, TrainingFailed
from neurodl.io.state import load_state, save_state
from neurodl_testing.engine import Regression, line_data


def test_full_batch_gradient_descent_recovers_slope_and_intercept():
    torch.manual_seed(0)
    x, y = line_data()
    task = Regression(nn.Linear(1, 1))
    options = TrainOptions(epochs=400, batch_size=0, optimizer="sgd", lr=0.1, patience=0, device="cpu")
    result = fit(task, TensorBatches(x, y, batch_size=0), None, options)
    layer = task.model
    assert layer.weight.item() == pytest.approx(3.0, abs=1e-3)
    assert layer.bias.item() == pytest.approx(-2.0, abs=1e-3)
    assert result.history[-1]["train_loss"] < 1e-6


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(optimizer):
    torch.manual_seed(0)
    x, y = line_data(noise=0.1)
    task = Regression(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)))
    lr = 1.0 if optimizer == "adadelta" else 0.05
    options = TrainOptions(
        epochs=30,
        batch_size=16,
        optimizer=optimizer,
        lr=lr,
        momentum=0.9 if optimizer == "sgd" else 0.0,
        patience=0,
        device="cpu",
    )
    result = fit(task, TensorBatches(x, y, batch_size=16, shuffle=True), None, options)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


def test_batch_size_one_is_stochastic_and_all_is_one_step():
    x, y = line_data(n=10)
    assert len(TensorBatches(x, y, batch_size=1)) == 10
    assert len(TensorBatches(x, y, batch_size=0)) == 1
    assert len(TensorBatches(x, y, batch_size=4)) == 3


def test_early_stopping_stops_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    x, y = line_data(n=32, noise=0.5)
    # Validation targets unrelated to the inputs: the validation loss cannot keep improving.
    xv, _ = line_data(n=32, seed=1)
    yv = torch.randn(32, generator=torch.Generator().manual_seed(2)) * 5
    task = Regression(nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1)))
    options = TrainOptions(epochs=500, batch_size=8, lr=0.01, patience=5, device="cpu")
    result = fit(
        task, TensorBatches(x, y, batch_size=8, shuffle=True), TensorBatches(xv, yv, batch_size=64), options
    )
    assert result.stopped_early
    assert result.epochs_run < 500
    assert result.epochs_run - result.best_epoch == 5
    best = min(r["val_loss"] for r in result.history)
    assert result.best_value == pytest.approx(best)


class StopAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step(self, *, epoch: int, step: int, loss: float) -> None:
        if epoch == self.epoch and step == 2:
            raise KeyboardInterrupt


def _dropout_task() -> Regression:
    torch.manual_seed(0)
    return Regression(nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1)))


def test_a_checkpoint_of_the_one_optimiser_format_still_resumes_exactly(tmp_path: Path):
    """Checkpoints written before every task stepped through named groups hold ``optimizer``/``scheduler``."""
    x, y = line_data(noise=0.2)
    xv, yv = line_data(n=16, noise=0.2, seed=3)
    options = TrainOptions(
        epochs=6, batch_size=8, lr=0.01, patience=0, scheduler="cosine", seed=7, device="cpu"
    )

    def batches():
        return TensorBatches(x, y, batch_size=8, shuffle=True, seed=7), TensorBatches(xv, yv, batch_size=64)

    reference = _dropout_task()
    fit(reference, *batches(), options)
    checkpoint = tmp_path / "run.safetensors"
    with pytest.raises(Interrupted):
        fit(_dropout_task(), *batches(), options, checkpoint=checkpoint, callbacks=[StopAt(epoch=4)])
    state = load_state(checkpoint)
    assert set(state["optimizers"]) == {"model"}  # one group, named like a GAN's
    state["optimizer"], state["scheduler"] = (
        state.pop("optimizers")["model"],
        state.pop("schedulers")["model"],
    )
    save_state(state, checkpoint)
    resumed = _dropout_task()
    assert fit(resumed, *batches(), options, checkpoint=checkpoint, resume=True).epochs_run == 6
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path):
    x, y = line_data(noise=0.2)
    xv, yv = line_data(n=16, noise=0.2, seed=3)
    options = TrainOptions(
        epochs=8, batch_size=8, lr=0.01, patience=0, scheduler="cosine", seed=7, device="cpu"
    )

    def batches():
        return TensorBatches(x, y, batch_size=8, shuffle=True, seed=7), TensorBatches(xv, yv, batch_size=64)

    reference = _dropout_task()
    fit(reference, *batches(), options)

    interrupted = _dropout_task()
    checkpoint = tmp_path / "checkpoints" / "run.safetensors"
    with pytest.raises(Interrupted, match="after 4 of 8 epochs; epochs 1-4 are saved"):
        fit(interrupted, *batches(), options, checkpoint=checkpoint, callbacks=[StopAt(epoch=5)])
    resumed = _dropout_task()  # a fresh process: nothing but the checkpoint survives
    result = fit(resumed, *batches(), options, checkpoint=checkpoint, resume=True)

    assert result.epochs_run == 8
    for (name, a), (_, b) in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_diverging_loss_is_a_failed_run():
    x, y = line_data()
    task = Regression(nn.Linear(1, 1))
    options = TrainOptions(epochs=50, batch_size=0, optimizer="sgd", lr=1e6, patience=0, device="cpu")
    with pytest.raises(TrainingFailed, match="diverged") as info:
        fit(task, TensorBatches(x * 1e3, y * 1e3, batch_size=0), None, options)
    assert "--lr" in str(info.value)


def test_checkpoint_round_trip_keeps_nested_state(tmp_path: Path):
    state = {
        "a": torch.arange(3),
        "opt": {"state": {0: {"step": torch.tensor(2.0)}}, "groups": [{"betas": (0.9, 0.999)}]},
        "n": None,
    }
    loaded = load_state(save_state(state, tmp_path / "s.safetensors"))
    assert torch.equal(loaded["a"], state["a"])
    assert 0 in loaded["opt"]["state"]
    assert loaded["opt"]["groups"][0]["betas"] == (0.9, 0.999)
    assert loaded["n"] is None


def test_damaged_checkpoint_gives_a_clear_error(tmp_path: Path):
    path = save_state({"a": torch.ones(100)}, tmp_path / "s.safetensors")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RunDirectoryError, match="damaged"):
        load_state(path)
