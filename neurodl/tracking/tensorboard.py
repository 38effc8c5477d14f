"""TensorBoard: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``).

Each epoch's record as scalars (the names of ``history.csv``: ``train_loss``,
``val_loss``, ``val_auc``, ``lr``...; the epoch as step), the task's preview images
(``previews/epoch-NNN.png``, e.g. translate's) at their epoch, and at the end the
run's plots and final metrics. The folds of ``--cv`` are runs of their own
(``RUN/tensorboard/fold-K``); the model itself writes to ``RUN/tensorboard``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from neurodl.engine.loop import Callback, FitResult
from neurodl.tracking.extras import require_extra
from neurodl.tracking.session import Backend, RunInfo, numeric_leaves

FOLDER = "tensorboard"
_PREVIEW = re.compile(r"epoch-(\d+)\.png$")


def _image(path: Path) -> Any:
    """An RGB array (height, width, 3) in [0, 1] from a PNG."""
    from matplotlib import image  # heavy: only when there is an image to log

    pixels = image.imread(str(path))
    return pixels[..., :3] if pixels.ndim == 3 else pixels[..., None].repeat(3, axis=2)


class TensorBoardBackend(Backend):
    """Writes TensorBoard event files into the run directory (see the module's documentation)."""

    name = "tensorboard"

    def __init__(self) -> None:
        # Fail before training starts when the library is missing (exit 2, naming the extra).
        require_extra("tensorboard", "--track tensorboard")
        self.writers: dict[str, Any] = {}
        self.logged_previews: set[str] = set()

    def writer(self, run: RunInfo, fit: str) -> Any:
        if fit not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[fit] = SummaryWriter(log_dir=str(run.path / FOLDER / fit))
        return self.writers[fit]

    def fit_callback(self, run: RunInfo, fit: str) -> Callback | None:
        return _EpochScalars(self, run, fit)

    def log_previews(self, run: RunInfo, fit: str) -> None:
        """Preview images the task wrote since the last call, each at its epoch."""
        folder = run.path / "previews"
        if not folder.is_dir():
            return
        for file in sorted(folder.glob("epoch-*.png")):
            match = _PREVIEW.search(file.name)
            if match and file.name not in self.logged_previews:
                self.logged_previews.add(file.name)
                self.writer(run, fit).add_image(
                    "preview", _image(file), int(match.group(1)), dataformats="HWC"
                )

    def finish(self, run: RunInfo, status: str) -> None:
        main = self.writer(run, "")
        final_step = int(run.summary.get("epochs", 0) or 0)
        for name, value in numeric_leaves(run.metrics()).items():
            if not name.startswith("folds."):
                main.add_scalar(f"final/{name}", value, final_step)
        for file in sorted(run.path.glob("*.png")):
            main.add_image(f"plots/{file.stem}", _image(file), 0, dataformats="HWC")
        main.add_text("status", status, 0)
        for writer in self.writers.values():
            writer.close()


class _EpochScalars(Callback):
    def __init__(self, backend: TensorBoardBackend, run: RunInfo, fit: str) -> None:
        self.backend, self.run, self.fit = backend, run, fit

    def on_epoch_end(self, record: dict[str, float]) -> None:
        writer = self.backend.writer(self.run, self.fit)
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(key, float(value), step)
        # A task's preview callback runs after this one: its image of this epoch is logged next time.
        self.backend.log_previews(self.run, self.fit)
        writer.flush()

    def on_fit_end(self, result: FitResult) -> None:
        self.backend.log_previews(self.run, self.fit)
        self.backend.writer(self.run, self.fit).flush()
