"""Turning command-line values into a frozen option set.

Precedence, lowest first: the option set's defaults, ``--config FILE``, then
the flags the user actually typed (Typer tells which ones were typed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from neurodl.config import RUNTIME_OPTIONS, build, load_config_file
from neurodl.errors import UsageError

T = TypeVar("T")


def split_list(value: Any) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` or repeated flags -> ``("a", "b")``."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())


def parse_ints(value: Any) -> tuple[int, ...]:
    """``"96,96,64"`` -> ``(96, 96, 64)``."""
    return tuple(int(v) for v in split_list(value))


def parse_floats(value: Any) -> tuple[float, ...]:
    """``"1,1,1.5"`` -> ``(1.0, 1.0, 1.5)``."""
    return tuple(float(v) for v in split_list(value))


def parse_hidden(value: Any) -> tuple[int, ...]:
    """``"64,32"`` -> ``(64, 32)``; ``"none"``/``0``/empty -> ``()`` (no hidden layer)."""
    parts = split_list(value)
    if not parts or (len(parts) == 1 and parts[0].lower() in ("none", "0", "linear")):
        return ()
    try:
        return tuple(int(p) for p in parts)
    except ValueError as exc:
        raise UsageError(
            f"--hidden '{value}' is not a list of layer sizes.",
            "Use e.g. --hidden 64,32, or --hidden none for linear/logistic regression.",
        ) from exc


def parse_batch_size(value: Any) -> int:
    """An integer, or ``all`` (0: the whole training set per step)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text in ("all", "full"):
        return 0
    try:
        size = int(text)
    except ValueError as exc:
        raise UsageError(
            f"--batch-size '{value}' is not a number.",
            "Use a positive integer, or 'all' for full-batch gradient descent.",
        ) from exc
    if size <= 0:
        raise UsageError(
            f"--batch-size must be positive, not {size}.", "Use 'all' for full-batch gradient descent."
        )
    return size


def resolve_options(
    cls: type[T],
    ctx: typer.Context,
    values: dict[str, Any],
    *,
    config_file: Path | None,
    converters: dict[str, Callable[[Any], Any]] | None = None,
    resume: bool = False,
) -> T:
    """Build ``cls`` from the config file and the flags typed on the command line.

    With ``resume`` the run's saved options are used, so any typed option is refused
    rather than silently ignored (except how to run it: ``RUNTIME_OPTIONS``).
    """
    converters = converters or {}
    typed = {
        name: value
        for name, value in values.items()
        if (source := ctx.get_parameter_source(name)) is not None and source.name != "DEFAULT"
    }
    changed = [name for name in typed if name not in RUNTIME_OPTIONS]
    if resume and (changed or config_file):
        given = [f"--{n.replace('_', '-')}" for n in changed] + (["--config"] if config_file else [])
        raise UsageError(
            f"--resume continues with the options saved in the run, so {', '.join(given)} cannot be changed.",
            "Drop those options, or start a new run (another --out, or --overwrite).",
        )
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update(typed)
    for name, convert in converters.items():
        if name in merged:
            merged[name] = convert(merged[name])
    return build(cls, merged, source=str(config_file) if config_file else "options")
