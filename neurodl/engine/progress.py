"""Rich progress on stderr: epoch, step, loss, monitored metric, ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from neurodl.engine.loop import Callback, FitResult


class RichProgress(Callback):
    """Progress bars for a fit: one over epochs, one over the steps of the current epoch.

    Args:
        console: where to draw (stderr).
        description: label of the run, e.g. ``fold 2/5``.
    """

    def __init__(self, console: Console, description: str = "training") -> None:
        self.console = console
        self.description = description
        self.progress: Progress | None = None
        self.epoch_task: Any = None
        self.step_task: Any = None
        self.steps = 0

    def on_fit_start(self, *, epochs: int, steps: int, start_epoch: int) -> None:
        self.steps = steps
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task(
            f"{self.description} epochs", total=epochs, completed=start_epoch, info=""
        )
        if steps > 1:
            self.step_task = self.progress.add_task("  steps", total=steps, info="")

    def on_step(self, *, epoch: int, step: int, loss: float) -> None:
        if self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, completed=step, info=f"loss {loss:.4g}")

    def on_epoch_end(self, record: dict[str, float]) -> None:
        if self.progress is None:
            return
        shown = [f"train_loss {record['train_loss']:.4g}"]
        shown += [f"{k} {v:.4g}" for k, v in record.items() if k.startswith("val_")][:3]
        if "data_wait" in record:
            shown.append(f"data wait {record['data_wait']:.0%}")
        self.progress.update(self.epoch_task, completed=int(record["epoch"]), info="  ".join(shown))
        if self.step_task is not None:
            self.progress.reset(self.step_task, total=self.steps)

    def on_fit_end(self, result: FitResult) -> None:
        self.close()
        stop = " (early stop)" if result.stopped_early else ""
        self.console.print(
            f"{self.description}: {result.epochs_run} epochs{stop}; best epoch {result.best_epoch}, {result.monitor} = {result.best_value:.4g}"
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
