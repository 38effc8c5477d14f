"""Run directories: the self-describing, copyable model bundle a ``train`` writes.

Layout (see docs/data.md): ``config.json`` (task, format version, resolved
options, versions), ``model.safetensors`` (weights, never a pickle),
``preprocessing.json``, ``splits.json``, ``history.csv``, ``metrics.json``,
plots as PNG and ``checkpoints/``. Every write is atomic.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neurodl import __version__
from neurodl.errors import NeurodlError, RunDirectoryError
from neurodl.io.atomic import atomic_output, remove_partial_writes, write_text_atomic

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _a(word: str) -> str:
    """The article before a task name: an 'autoencode' run, a 'segment' run."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _clean(value: Any) -> Any:
    """NaN/Inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def dumps_json(payload: Any) -> str:
    """Serialise to indented, strict JSON (NaN becomes null; numpy values become lists)."""
    return (
        json.dumps(_clean(json.loads(json.dumps(payload, default=_json_default))), indent=2, allow_nan=False)
        + "\n"
    )


def environment() -> dict[str, str]:
    """Versions that explain a run, recorded in ``config.json``."""
    import importlib.metadata as md

    versions = {"neurodl": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "monai", "nibabel", "numpy", "pandas", "scikit-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    return versions


class RunDirectory:
    """A run directory for one task.

    Args:
        path: the folder.
        task: the task that owns it (``biomarkers``, ``classify``...).

    Example:
        >>> run = RunDirectory.create("runs/ad-vs-cn", task="biomarkers", options={...})
        >>> run.write_json("metrics.json", {"accuracy": 0.9})
        >>> RunDirectory.open("runs/ad-vs-cn", task="biomarkers").read_json("metrics.json")
    """

    def __init__(self, path: str | Path, task: str, config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.task = task
        self.config: dict[str, Any] = config or {}
        # False in the other processes of a distributed run: one process (rank 0) writes the run.
        self.writer = True

    # -- creating and opening -------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        task: str,
        options: dict[str, Any],
        overwrite: bool = False,
        resume: bool = False,
        runtime: dict[str, str] | None = None,
    ) -> RunDirectory:
        """Create the folder and write ``config.json``.

        An existing run directory is refused unless ``overwrite`` (start again) or
        ``resume`` (continue it: its saved options are kept). ``runtime`` (e.g. the
        device the run trains on) is recorded with the package versions.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"{path}: exists and is not a directory.", "Choose another --out.")
        existing = path / CONFIG_FILE
        if resume:
            return cls.open(path, task=task)
        started = existing.exists() and (
            (path / WEIGHTS_FILE).exists() or any((path / "checkpoints").glob("*"))
        )
        if started and not overwrite:
            raise RunDirectoryError(
                f"{path}: already holds a run.",
                f"Choose another --out, add --overwrite to replace it, or add --resume (with --out {path}) to continue it.",
            )
        if path.is_dir() and not existing.exists() and any(path.iterdir()) and not overwrite:
            raise RunDirectoryError(
                f"{path}: exists, is not empty and is not a run directory.",
                "Choose a new or empty folder for --out.",
            )
        # A run that failed before its first epoch (bad option, bad input) holds only config.json: start again.
        path.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(path)
        config = {
            "neurodl_format": FORMAT_VERSION,
            "task": task,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "options": options,
            "environment": {**environment(), **(runtime or {})},
        }
        run = cls(path, task, config)
        run.write_json(CONFIG_FILE, config)
        return run

    @classmethod
    def open(cls, path: str | Path, *, task: str | None = None) -> RunDirectory:
        """Open an existing run directory, refusing one from another task or a newer neurodl."""
        path = Path(path)
        if not path.exists():
            raise RunDirectoryError(
                f"{path}: run directory does not exist.", "Give the --out folder of a `train` command."
            )
        if not path.is_dir():
            raise RunDirectoryError(
                f"{path}: is a file, not a run directory.", "Give the --out folder of a `train` command."
            )
        config_path = path / CONFIG_FILE
        if not config_path.exists():
            raise RunDirectoryError(
                f"{path}: not a neurodl run directory (no {CONFIG_FILE}).",
                "Give the --out folder of a `train` command.",
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirectoryError(
                f"{config_path}: is not valid JSON ({exc}).", "The run directory is damaged; train again."
            ) from exc
        if not isinstance(config, dict) or "task" not in config or "neurodl_format" not in config:
            raise RunDirectoryError(
                f"{config_path}: lacks 'task' or 'neurodl_format'.",
                "The run directory is damaged; train again.",
            )
        version = config["neurodl_format"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise RunDirectoryError(
                f"{path}: written by a newer neurodl (run format {version}; this neurodl reads up to {FORMAT_VERSION}).",
                "Upgrade neurodl (pip install -U neurodl).",
            )
        found = str(config["task"])
        if task is not None and found != task:
            raise RunDirectoryError(
                f"{path}: is {_a(found)} '{found}' run, not {_a(task)} '{task}' run.",
                f"Use `neurodl {found} ...` with this run, or give a run directory made by `neurodl {task} train`.",
            )
        return cls(path, found, config)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config.get("options", {}))

    # -- files ----------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """Path of a file inside the run directory; names cannot escape it."""
        candidate = (self.path / name).resolve()
        root = self.path.resolve()
        if candidate != root and root not in candidate.parents:
            raise RunDirectoryError(
                f"{self.path}: refers to '{name}', which lies outside the run directory.",
                "The run directory was tampered with; train again.",
            )
        return candidate

    def existing_file(self, name: str) -> Path:
        """``file(name)``, which must exist: a missing one means the run did not finish."""
        path = self.file(name)
        if not path.exists():
            raise RunDirectoryError(
                f"{self.path}: {name} is missing.",
                "The run is incomplete (did training finish?); train again or --resume it.",
            )
        return path

    def remove_partial_writes(self) -> list[Path]:
        """Delete temporary files left by a process killed mid-write (before resuming a run)."""
        return remove_partial_writes(self.path)

    def exists(self, name: str) -> bool:
        return self.file(name).exists()

    def write_json(self, name: str, payload: Any) -> Path:
        if not self.writer:
            return self.file(name)
        return write_text_atomic(self.file(name), dumps_json(payload))

    def read_json(self, name: str) -> Any:
        path = self.existing_file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirectoryError(
                f"{path}: is not valid JSON ({exc}).", "The run directory is damaged; train again."
            ) from exc

    def write_text(self, name: str, text: str) -> Path:
        if not self.writer:
            return self.file(name)
        return write_text_atomic(self.file(name), text)

    def write_csv(self, name: str, frame: Any) -> Path:
        """Write a pandas DataFrame atomically (no index; tab-separated for a ``.tsv`` name)."""
        if not self.writer:
            return self.file(name)
        with atomic_output(self.file(name)) as tmp:
            frame.to_csv(tmp, index=False, sep="\t" if name.lower().endswith(".tsv") else ",")
        return self.file(name)

    def save_figure(self, name: str, figure: Any) -> Path:
        """Save a matplotlib figure as PNG atomically and close it."""
        import matplotlib.pyplot as plt  # heavy: only when a plot is written

        if self.writer:
            with atomic_output(self.file(name)) as tmp:
                figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(figure)
        return self.file(name)

    # -- weights ----------------------------------------------------------------------

    def save_weights(self, tensors: dict[str, Any], name: str = WEIGHTS_FILE) -> Path:
        """Save a state dict as safetensors (atomically)."""
        from safetensors.torch import save_file  # torch-heavy: only when weights are written

        if not self.writer:
            return self.file(name)
        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with atomic_output(self.file(name)) as tmp:
            save_file(
                clean, str(tmp), metadata={"neurodl_task": self.task, "neurodl_format": str(FORMAT_VERSION)}
            )
        return self.file(name)

    def load_weights(self, name: str = WEIGHTS_FILE) -> dict[str, Any]:
        """Load safetensors weights; never unpickles. Damaged files give a clear error."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.existing_file(name)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise RunDirectoryError(
                f"{path}: cannot be read as safetensors ({exc}).",
                "The weights file is damaged or was tampered with; train again.",
            ) from exc

    def weight_shapes(self, name: str = WEIGHTS_FILE) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor in a safetensors file, read from its header alone."""
        from safetensors import SafetensorError, safe_open

        path = self.existing_file(name)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise RunDirectoryError(
                f"{path}: cannot be read as safetensors ({exc}).",
                "The weights file is damaged or was tampered with; train again.",
            ) from exc

    def load_model(self, build: Callable[[], Any], name: str = WEIGHTS_FILE) -> Any:
        """Build the network described in ``preprocessing.json`` with ``build`` and load its weights.

        The network is first built on PyTorch's meta device (shapes, no memory) and compared
        with the weights file's header: a tampered description (an absurd size, an unknown
        model) or foreign weights are refused before anything is allocated.
        """
        import torch  # heavy: only when a model is loaded

        try:
            with torch.device("meta"):
                skeleton = build()
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, NeurodlError) as exc:
            raise RunDirectoryError(
                f"{self.file('preprocessing.json')}: describes a model that cannot be built ({exc}).",
                "The run was modified; train the model again.",
            ) from exc
        expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
        if expected != self.weight_shapes(name):
            raise RunDirectoryError(
                f"{self.path}: {name} does not match the model described in preprocessing.json "
                "(other tensor names or shapes).",
                "The run was modified; train the model again.",
            )
        model = build()
        self.load_into(model, name)
        return model

    def load_into(self, model: Any, name: str = WEIGHTS_FILE) -> None:
        """Load the safetensors weights into ``model``, refusing weights of another shape or keys."""
        try:
            model.load_state_dict(self.load_weights(name))
        except RuntimeError as exc:
            raise RunDirectoryError(
                f"{self.path}: {name} does not match the model described in preprocessing.json.",
                "The run was modified; train again.",
            ) from exc
