"""Search spaces: which options a search varies, over which values; a default per task.

A space is a mapping of option names (the flags' names, ``-`` or ``_``) to:

- a list: one of these values (``optimizer: [sgd, adam]``, ``hidden: ["none", "64", "64,32"]``);
- ``{low: L, high: H}``: a number between L and H, an integer when both are integers;
  ``log: true`` samples on a log scale (learning rates, weight decay), ``step: S`` on a grid;
- a single value: fixed, not searched (``model: cnn``).

``--space FILE`` (YAML or JSON) is laid over the task's default space: its
entries replace the default's of the same name and add new ones; a fixed
value takes an option out of the search.

Example:
    >>> space = SearchSpace.parse({"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "hidden": ["none", "64"]})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodl.errors import UsageError

# The lecture's knobs: learning rate (log scale), optimiser, batch size, hidden layers and width,
# activation, dropout, weight decay and the model, per task, over ranges that train on a laptop.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "biomarkers": {
        "lr": {"low": 1e-4, "high": 0.3, "log": True},
        "optimizer": ["sgd", "adam", "adamw", "rmsprop"],
        "momentum": [0.0, 0.9],
        "batch_size": [8, 16, 32, "all"],
        "hidden": ["none", "16", "64", "64,32", "128,64"],
        "activation": ["relu", "tanh", "sigmoid"],
        "dropout": {"low": 0.0, "high": 0.5},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    },
    "classify": {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "optimizer": ["sgd", "adam", "adamw"],
        "momentum": [0.0, 0.9],
        "batch_size": [2, 4, 8],
        "model": ["cnn", "resnet18"],
        "depth": [3, 4],
        "width": [8, 16, 32],
        "dropout": {"low": 0.0, "high": 0.5},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    },
    "segment": {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "optimizer": ["adam", "adamw", "sgd"],
        "momentum": [0.0, 0.9],
        "batch_size": [1, 2, 4],
        "model": ["unet", "segresnet", "attention_unet"],
        "loss": ["dice", "dicece"],
        "dropout": {"low": 0.0, "high": 0.3},
        "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    },
    "autoencode": {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "optimizer": ["adam", "adamw", "sgd"],
        "batch_size": [2, 4, 8],
        "model": ["ae", "vae"],
        "latent_dim": [8, 16, 32, 64],
        "width": [8, 16, 32],
        "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    },
    "translate": {
        "lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "optimizer": ["adam", "adamw"],
        "batch_size": [4, 8, 16],
        "lambda_l1": {"low": 10.0, "high": 300.0, "log": True},
        "width": [16, 32],
        "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    },
}


@dataclass(frozen=True)
class Dimension:
    """One searched option."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        """The value of this option for an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return ", ".join(map(str, self.choices))
        return f"{self.low:g} to {self.high:g}{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class SearchSpace:
    """The searched options (dimensions) and the ones fixed by the space file."""

    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any]

    @classmethod
    def parse(cls, entries: dict[str, Any], source: str = "space") -> SearchSpace:
        """Check a space mapping (see the module's documentation) and build it.

        Raises:
            UsageError: an entry that is not a list, a range or a single value (names ``source``).
        """
        dimensions, fixed = [], {}
        for raw_name, spec in entries.items():
            name = str(raw_name).replace("-", "_")
            if isinstance(spec, list | tuple):
                if not spec or not all(v is None or isinstance(v, bool | int | float | str) for v in spec):
                    raise UsageError(
                        f"{source}: '{raw_name}' must list at least one plain value (numbers or text).",
                        "Write e.g. optimizer: [sgd, adam].",
                    )
                dimensions.append(Dimension(name, choices=tuple(spec)))
            elif isinstance(spec, dict) and "choices" in spec:
                dimensions.append(Dimension(name, choices=tuple(spec["choices"])))
            elif isinstance(spec, dict):
                unknown = sorted(set(spec) - {"low", "high", "log", "step", "type"})
                if unknown or "low" not in spec or "high" not in spec:
                    raise UsageError(
                        f"{source}: '{raw_name}' must be a list of values or a range with low and high{f' (unknown keys: {unknown})' if unknown else ''}.",
                        "Write e.g. lr: {low: 1.0e-4, high: 1.0e-1, log: true}.",
                    )
                try:
                    low, high = float(spec["low"]), float(spec["high"])
                    step = float(spec["step"]) if spec.get("step") is not None else None
                except (TypeError, ValueError) as exc:
                    raise UsageError(f"{source}: '{raw_name}': low, high and step must be numbers.") from exc
                log = bool(spec.get("log", False))
                if not low < high or (log and low <= 0):
                    raise UsageError(
                        f"{source}: '{raw_name}': low must be below high{' and above 0 on a log scale' if log else ''} (got {low:g}, {high:g})."
                    )
                integer = spec.get("type") == "int" or (
                    spec.get("type") != "float"
                    and all(
                        isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")
                    )
                )
                dimensions.append(Dimension(name, low=low, high=high, log=log, step=step, integer=integer))
            else:
                fixed[name] = spec
        return cls(tuple(dimensions), fixed)

    @classmethod
    def for_task(cls, task: str, file: Path | None = None) -> SearchSpace:
        """The task's default space, with ``file`` (YAML/JSON) laid over it."""
        entries = dict(DEFAULT_SPACES[task])
        source = "default space"
        if file is not None:
            from neurodl.config import load_config_file

            entries.update(load_config_file(file))
            source = str(file)
        return cls.parse(entries, source)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The options of one trial: each dimension's value, and the fixed values."""
        return {**self.fixed, **{d.name: d.suggest(trial) for d in self.dimensions}}
