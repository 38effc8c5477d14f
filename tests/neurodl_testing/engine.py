"""Tiny engine tasks and the torchrun launcher the engine and distributed tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn


class Regression:
    """A minimal task: a model and the mean squared error."""

    default_monitor = "val_loss"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def training_step(self, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(self.model(x).squeeze(1), y)}

    def validation_step(self, batch):
        x, y = batch
        return {"output": self.model(x).squeeze(1), "target": y}

    def validation_metrics(self, outputs):
        return {"loss": float(nn.functional.mse_loss(outputs["output"], outputs["target"]))}


def line_data(n: int = 64, a: float = 3.0, b: float = -2.0, noise: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = a * x[:, 0] + b + noise * torch.randn(n, generator=g)
    return x, y


def torchrun(*args: str | Path, processes: int = 2, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
