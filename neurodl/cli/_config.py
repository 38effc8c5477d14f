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
from neurodl.errors import NeurodlError, UsageError

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
    if resume:
        # How to run (RUNTIME_OPTIONS) comes from this command line, typed or not.
        runtime = {n: v for n, v in values.items() if n in RUNTIME_OPTIONS}
        return _resumed_options(
            cls, ctx, {**runtime, **typed}, config_file=config_file, converters=converters
        )
    merged: dict[str, Any] = load_config_file(config_file) if config_file else {}
    merged.update(typed)
    for name, convert in converters.items():
        if name in merged:
            merged[name] = convert(merged[name])
    return build(cls, merged, source=str(config_file) if config_file else "options")


def _flag(ctx: typer.Context, name: str) -> str:
    """The long flag a parameter is typed as (``image`` is ``--source`` in ``translate train``)."""
    for param in ctx.command.params:
        if param.name == name:
            longs = [o for o in param.opts if o.startswith("--")]
            if longs:
                return longs[0]
    return f"--{name.replace('_', '-')}"


def _leaves(options: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 0.1}, "label": "dx"}`` -> ``{"lr": 0.1, "label": "dx"}``."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "(none)"


def _resumed_options(
    cls: type[T],
    ctx: typer.Context,
    typed: dict[str, Any],
    *,
    config_file: Path | None,
    converters: dict[str, Callable[[Any], Any]],
) -> T:
    """The run's saved options, with the typed flags checked against them.

    A flag equal to the saved value is accepted (the interrupted command with
    ``--resume`` appended works); ``--epochs`` may be raised to train longer;
    runtime options (``RUNTIME_OPTIONS``) are taken from the command line; any other
    change is refused, naming the saved and the typed value.
    """
    from neurodl.config import to_dict
    from neurodl.io.rundir import RunDirectory

    out = ctx.params.get("out")
    if config_file:
        raise UsageError(
            "--resume continues with the options saved in the run, so --config cannot be given.",
            "Drop --config (the run's config.json holds its options), or start a new run (another --out, or --overwrite).",
        )
    try:
        saved = RunDirectory.open(out).options if out is not None else None
    except NeurodlError:
        saved = None  # no run to resume: the task's start says so, naming the folder
    if saved is not None:
        saved.pop("input", None)
        saved.pop("input_sha256", None)
        try:
            base = to_dict(build(cls, saved, source="config.json"))
        except NeurodlError:
            base = None  # a run of another task: refused by the task's start, naming both
    else:
        base = None
    converted = {n: converters[n](v) if n in converters else v for n, v in typed.items()}
    if base is None:
        changed = [n for n in typed if n not in RUNTIME_OPTIONS]
        if changed:
            given = ", ".join(_flag(ctx, n) for n in changed)
            raise UsageError(
                f"--resume continues with the options saved in the run, so {given} cannot be changed.",
                "Drop those options, or start a new run (another --out, or --overwrite).",
            )
        return build(cls, converted, source="options")
    wanted = to_dict(build(cls, {**base, **converted}, source="options"))
    old, new = _leaves(base), _leaves(wanted)
    refused = [n for n in typed if n not in RUNTIME_OPTIONS and n != "epochs" and new.get(n) != old.get(n)]
    if "epochs" in typed and new["epochs"] < old["epochs"]:
        refused.append("epochs")
    if refused:
        changes = "; ".join(
            f"{_flag(ctx, n)} {_shown(new.get(n))} (the run has {_shown(old.get(n))})" for n in refused
        )
        raise UsageError(
            f"--resume continues with the options saved in the run, so these cannot be changed: {changes}.",
            "Drop those options (or give the run's values), or start a new run (another --out, or --overwrite)."
            + (" --epochs may only be raised, to train longer." if "epochs" in refused else ""),
        )
    return build(cls, {**base, **converted}, source="options")
