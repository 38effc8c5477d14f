"""What ``fit`` keeps for a run besides the loop: the optimisers of every task's groups of networks
(one, ``model``, for a one-network task) and the epoch-by-epoch selection of the best weights;
both are what a checkpoint saves and a resumed run restores."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from neurodl.config import TrainOptions
from neurodl.engine.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from neurodl.engine.loop import AdversarialTask, FitResult, Task


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights (the best epoch's are kept this way)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class OneNetwork:
    """A one-network :class:`Task` as the engine trains every task: one optimiser group, ``model``,
    stepped on the loss its ``training_step(batch)`` returns (not on a non-finite one: fit stops then)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    @property
    def model(self) -> torch.nn.Module:
        return self.task.model

    @property
    def default_monitor(self) -> str:
        return self.task.default_monitor

    def optimizer_groups(self) -> dict[str, tuple[Any, ...]]:
        return {"model": (self.task.model.parameters(), None)}

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        self.task.model = wrap(self.task.model)

    def training_step(self, batch: Any, step: Callable[[str, torch.Tensor], None]) -> dict[str, torch.Tensor]:
        out = self.task.training_step(batch)
        loss = out["loss"]
        if torch.isfinite(loss).all():
            # The backward pass outside autocast (fit runs the step inside it), as PyTorch advises.
            with torch.autocast(loss.device.type, enabled=False):
                step("model", loss)
        return out


@dataclass
class Optimisation:
    """The optimisers of a fit (one per group of the task), their schedulers, the fp16 gradient scaler
    and the stepper that uses them: what a checkpoint saves besides the model."""

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler

    @classmethod
    def build(
        cls, task: AdversarialTask, options: TrainOptions, mode: Literal["min", "max"], device: torch.device
    ) -> Optimisation:
        # A group may add optimiser settings: (parameters, lr, {"betas": (0.5, 0.999)}) for a GAN's Adam.
        optimizers = {
            name: build_optimizer(params, options, lr, **(settings[0] if settings else {}))
            for name, (params, lr, *settings) in task.optimizer_groups().items()
        }
        return cls(
            optimizers,
            {name: build_scheduler(opt, options, mode) for name, opt in optimizers.items()},
            torch.amp.GradScaler(device.type, enabled=options.precision == "fp16" and device.type == "cuda"),
        )

    @property
    def lr(self) -> float:
        """The first group's learning rate: the one recorded per epoch."""
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])

    def schedule(self, value: float) -> None:
        """Each scheduler's step at the end of an epoch (plateau: on the monitor's ``value``)."""
        for scheduler in self.schedulers.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(value)
            elif scheduler is not None:
                scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {
                name: sched.state_dict() if sched is not None else None
                for name, sched in self.schedulers.items()
            },
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints of one-network runs written before every task used groups hold one optimiser.
        saved_optimizers = state["optimizers"] if "optimizers" in state else {"model": state["optimizer"]}
        saved_schedulers = state["schedulers"] if "optimizers" in state else {"model": state.get("scheduler")}
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved_optimizers[name])
            sched = self.schedulers[name]
            if sched is not None and saved_schedulers and saved_schedulers.get(name) is not None:
                sched.load_state_dict(saved_schedulers[name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@dataclass
class Selection:
    """What a fit keeps between epochs, and its checkpoint holds: the history, the best epoch's weights
    and how many epochs have passed without improvement."""

    result: FitResult
    best_state: dict[str, torch.Tensor]
    bad_epochs: int = 0

    def state_dict(self) -> dict[str, Any]:
        result = self.result
        return {
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_value": None if math.isnan(result.best_value) else result.best_value,
            "stopped_early": result.stopped_early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state = state["best_state"]
        self.bad_epochs = int(state["bad_epochs"])
        self.result.history = [dict(r) for r in state["history"]]
        self.result.best_epoch = int(state["best_epoch"])
        self.result.best_value = float(state["best_value"]) if state["best_value"] is not None else math.nan
        self.result.stopped_early = bool(state["stopped_early"])

    def update(self, record: dict[str, float], model: torch.nn.Module, mode: str, min_delta: float) -> None:
        """Add an epoch's ``record``; keep the model's weights when its monitor improved."""
        result = self.result
        value = record[result.monitor]
        improved = math.isnan(result.best_value) or (
            value < result.best_value - min_delta if mode == "min" else value > result.best_value + min_delta
        )
        result.history.append(record)
        if improved:
            result.best_value, result.best_epoch, self.bad_epochs = value, int(record["epoch"]), 0
            self.best_state = clone_state(model)
        else:
            self.bad_epochs += 1
