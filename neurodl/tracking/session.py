"""One training command's trackers: started at its first fit, finished after its run directory is written."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurodl.config import TrainOptions
from neurodl.engine.loop import Callback, FitResult
from neurodl.engine.observers import observing
from neurodl.errors import Interrupted

logger = logging.getLogger(__name__)

# Files of a run directory that are not "small files" for a tracker: weights, resume state, caches, events.
SKIPPED_FOLDERS = ("checkpoints", "cache", "tensorboard")
SMALL_FILE_BYTES = 20 * 1024 * 1024


@dataclass
class RunInfo:
    """What a tracker is told about the run it logs."""

    path: Path
    task: str
    options: dict[str, Any]
    input: str = ""
    input_sha256: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, task: str) -> RunInfo:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        options = dict(config.get("options", {}))
        return cls(
            path=path,
            task=str(config.get("task", task)),
            options=options,
            input=str(options.pop("input", "")),
            input_sha256=str(options.pop("input_sha256", "")),
        )

    @property
    def model(self) -> str:
        """The model's name: the run's summary says it best (biomarkers derive it from --hidden)."""
        return str(self.summary.get("model") or self.options.get("model") or "")

    def small_files(self) -> list[Path]:
        """The run's metrics, tables, plots and report: every file but weights-sized ones and resume state."""
        files = []
        for file in sorted(self.path.rglob("*")):
            relative = file.relative_to(self.path)
            if not file.is_file() or relative.parts[0] in SKIPPED_FOLDERS or file.name.startswith("."):
                continue
            if file.stat().st_size <= SMALL_FILE_BYTES and not file.name.endswith(".safetensors"):
                files.append(file)
        return files

    def metrics(self) -> dict[str, Any]:
        metrics_file = self.path / "metrics.json"
        if not metrics_file.exists():
            return {}
        loaded = json.loads(metrics_file.read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else {}


def flat_options(options: dict[str, Any]) -> dict[str, str]:
    """Options as flat ``name -> text`` pairs, the names of the command-line flags (``train.lr`` -> ``lr``)."""
    flat: dict[str, str] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(flat_options(value))
        elif isinstance(value, list | tuple):
            flat[key] = ",".join(map(str, value))
        else:
            flat[key] = str(value)
    return flat


def numeric_leaves(payload: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a nested mapping as ``a.b.c -> value`` (lists such as a confusion matrix left out)."""
    found: dict[str, float] = {}
    if isinstance(payload, dict):
        for key, value in payload.items():
            found.update(numeric_leaves(value, f"{prefix}{key}."))
    elif isinstance(payload, bool):
        pass
    elif isinstance(payload, int | float):
        name = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", prefix[:-1])
        found[name] = float(payload)
    return found


def fit_name(description: str) -> str:
    """``fold 2/5`` -> ``fold-2``; the one model or the final model of ``--cv`` -> ``""`` (the run itself)."""
    match = re.match(r"fold (\d+)", description)
    return f"fold-{match.group(1)}" if match else ""


class Backend:
    """A tracking tool. Subclasses implement what they log; errors are handled by the session."""

    name = ""

    def start(self, run: RunInfo) -> None: ...

    def fit_callback(self, run: RunInfo, fit: str) -> Callback | None:
        return None

    def finish(self, run: RunInfo, status: str) -> None: ...


class _Guarded(Callback):
    """A tracker's callback whose errors drop the tracker instead of the training run."""

    def __init__(self, session: TrackingSession, backend: Backend, inner: Callback) -> None:
        self.session, self.backend, self.inner = session, backend, inner

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        if self.backend in self.session.backends:
            self.session.guard(self.backend, getattr(self.inner, hook), *args, **kwargs)

    def on_fit_start(self, *, epochs: int, steps: int, start_epoch: int) -> None:
        self._call("on_fit_start", epochs=epochs, steps=steps, start_epoch=start_epoch)

    def on_epoch_end(self, record: dict[str, float]) -> None:
        self._call("on_epoch_end", record)

    def on_fit_end(self, result: FitResult) -> None:
        self._call("on_fit_end", result)


class TrackingSession:
    """The trackers of one ``train`` command (``--track``), as an observer of its fits.

    Args:
        options: the run's engine options (``track``, ``track_uri``, ``experiment``).
        run_dir: the run directory the command writes (``--out``).
        task: the task's name (the default experiment name).
        console: a Rich console for the warning when a tracker fails (else the log).

    Raises:
        UsageError: a tracker's library is not installed (names the pip extra).
    """

    def __init__(self, options: TrainOptions, run_dir: Path, *, task: str, console: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.task = task
        self.console = console
        self.backends: list[Backend] = []
        self.run: RunInfo | None = None
        self.enabled = True  # False in the processes of a distributed run that do not report
        self.warnings: list[str] = []
        self.summary: dict[str, Any] | None = None  # the train command's summary, logged at the end
        for name in dict.fromkeys(options.track):
            if name == "mlflow":
                from neurodl.tracking.mlflow import MlflowBackend

                self.backends.append(
                    MlflowBackend(options.track_uri, options.experiment or task, self.run_dir)
                )
            elif name == "tensorboard":
                from neurodl.tracking.tensorboard import TensorBoardBackend

                self.backends.append(TensorBoardBackend())

    def warn(self, backend: Backend, error: BaseException) -> None:
        text = f"--track {backend.name}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}; the run goes on without {backend.name} tracking."
        self.warnings.append(text)
        if self.console is not None:
            self.console.print(f"[yellow]Warning:[/yellow] {text}", markup=True, highlight=False)
        else:
            logger.warning(text)

    def guard(self, backend: Backend, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a tracker's action and return its result; on any error warn once, drop that tracker, return None."""
        try:
            return action(*args, **kwargs)
        except Exception as exc:  # a tracker must never stop training, whatever its library raises
            if backend in self.backends:
                self.backends.remove(backend)
            self.warn(backend, exc)
            return None

    def _start(self) -> bool:
        if self.run is not None:
            return True
        from neurodl.engine import distributed  # torch: a fit is about to start anyway

        if not self.enabled or not distributed.is_main() or not (self.run_dir / "config.json").exists():
            self.enabled = False
            return False
        try:
            self.run = RunInfo.read(self.run_dir, self.task)
        except (OSError, ValueError) as exc:  # a damaged config.json: the run goes on untracked
            for backend in list(self.backends):
                self.backends.remove(backend)
                self.warn(backend, exc)
            self.enabled = False
            return False
        for backend in list(self.backends):
            self.guard(backend, backend.start, self.run)
        return True

    def fit_callbacks(self, description: str) -> list[Callback]:
        """The trackers' callbacks for one fit (a fold of ``--cv`` is a nested run)."""
        if not self.backends or not self._start():
            return []
        assert self.run is not None
        callbacks: list[Callback] = []
        for backend in list(self.backends):
            made = self.guard(backend, backend.fit_callback, self.run, fit_name(description))
            if made is not None:
                callbacks.append(_Guarded(self, backend, made))
        return callbacks

    def finish(self, summary: dict[str, Any] | None, status: str) -> None:
        """Log the final metrics and files, then close every tracker's run with ``status``."""
        if self.run is None:
            return
        self.run.summary = dict(summary or {})
        for backend in list(self.backends):
            self.guard(backend, backend.finish, self.run, status)


@contextlib.contextmanager
def tracked(
    options: TrainOptions, run_dir: Path, *, task: str, console: Any = None
) -> Iterator[TrackingSession]:
    """Track every fit of the block; set ``session.summary`` before it ends to log the run's summary.

    The trackers' runs end FINISHED, KILLED (Ctrl-C) or FAILED with the block.

    Example:
        >>> with tracked(options.train, out, task="biomarkers") as session:
        ...     session.summary = biomarkers.train(table, options, out)
    """
    session = TrackingSession(options, run_dir, task=task, console=console)
    if not session.backends:
        yield session
        return
    status = "FAILED"
    try:
        with observing(session):
            yield session
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        session.finish(session.summary, status)
