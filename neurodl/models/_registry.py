"""Model registry: name -> builder, per task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neurodl.errors import UsageError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the task it serves, its name, a one-line description and its builder."""

    task: str
    name: str
    description: str
    builder: Callable[..., Any]


_REGISTRY: dict[tuple[str, str], ModelEntry] = {}


def register_model(
    task: str, name: str, description: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a builder function under ``(task, name)``.

    Example:
        >>> @register_model("biomarkers", "mlp", "multilayer perceptron")
        ... def mlp(in_features, out_features, hidden=(64,)): ...
    """

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[(task, name)] = ModelEntry(task, name, description, builder)
        return builder

    return decorate


def list_models(task: str | None = None) -> list[ModelEntry]:
    """Registered models, optionally of one task, sorted by task then name."""
    return sorted(
        (e for e in _REGISTRY.values() if task is None or e.task == task), key=lambda e: (e.task, e.name)
    )


def create_model(task: str, name: str, **kwargs: Any) -> Any:
    """Build a registered model by name; an unknown name lists the known ones."""
    entry = _REGISTRY.get((task, name))
    if entry is None:
        known = ", ".join(e.name for e in list_models(task)) or "none"
        raise UsageError(
            f"Unknown {task} model '{name}'.", f"Known {task} models: {known} (see `neurodl models`)."
        )
    return entry.builder(**kwargs)
