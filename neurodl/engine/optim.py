"""Optimisers and learning-rate schedules, by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

from neurodl.config import TrainOptions
from neurodl.errors import UsageError


def build_optimizer(
    params: Iterable[Any],
    options: TrainOptions,
    lr: float | None = None,
    *,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser named by ``options.optimizer`` (sgd, adam, adamw, adadelta, adagrad, rmsprop).

    ``betas``: Adam's and AdamW's moment decays, for a task that needs others than
    (0.9, 0.999) (a GAN: 0.5, so that the momentum follows the moving opponent).
    """
    lr = options.lr if lr is None else lr
    moments = betas or (0.9, 0.999)  # torch's default
    wd = options.weight_decay
    name = options.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=options.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=moments)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=moments)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=options.momentum, weight_decay=wd)
    raise UsageError(
        f"--optimizer '{name}' is unknown.", "Use sgd, adam, adamw, adadelta, adagrad or rmsprop."
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, options: TrainOptions, mode: Literal["min", "max"] = "min"
) -> Any:
    """The learning-rate schedule named by ``options.scheduler`` (none, plateau, cosine)."""
    if options.scheduler == "plateau":
        patience = max(1, options.patience // 3) if options.patience else 5
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=patience)
    if options.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    return None
