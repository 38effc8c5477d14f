"""A task's ``train`` command, built from its options dataclass.

Each flag (names, help, panel, how its text is parsed) is declared once, beside its
field in :mod:`neurodl.config`, the fields of nested option sets (``images``,
``train``) included. This module turns them into the Typer parameters of the
command (Typer reads a signature, so the command gets one built here), adds the ones
every ``train`` has (the manifest or table, ``--out``, ``--config``, ``--resume``,
``--overwrite``, ``--quiet``, ``--json``) and hands the resolved options to the
task's body: no parameter list to keep in step with the dataclass.

Example:
    >>> @train_command(app, ClassifyOptions, source_help="Manifest (CSV/TSV) ...")
    ... def train(manifest: Path | None, options: ClassifyOptions, run: TrainRun) -> None:
    ...     '''Train a 3D CNN on the images of a manifest; write a run directory.'''
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from neurodl.cli._config import (
    parse_batch_size,
    parse_floats,
    parse_hidden,
    parse_ints,
    resolve_options,
    split_list,
)
from neurodl.cli._options import ConfigOption, JsonFlag, QuietFlag
from neurodl.config import PANELS, Flag

T = TypeVar("T")

# Flag.parse -> how the typed text (or a --config value) becomes the field's value.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "items": split_list,
    "ints": parse_ints,
    "floats": parse_floats,
    "hidden": parse_hidden,
    "batch_size": parse_batch_size,
}
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
# The positional argument of a task trained on a manifest of images, one image column.
IMAGE_MANIFEST = (
    "Manifest (CSV/TSV): one row per image. Or a BIDS dataset root (--image names a suffix, e.g. T1w). "
    "Not needed with --resume."
)


@dataclass(frozen=True)
class TrainRun:
    """What a ``train`` command is told besides the task's options: where to write, how to report."""

    out: Path
    resume: bool
    overwrite: bool
    quiet: bool
    json_output: bool


@dataclass(frozen=True)
class FieldFlag:
    """One field of a task's options as a flag of its ``train`` command."""

    name: str
    kind: Any
    default: Any
    flag: Flag


def option_flags(cls: type) -> list[FieldFlag]:
    """The flags of ``cls``'s command, in ``--help`` order, with the task's defaults.

    Nested option sets are flattened in place; ``cls.flag_changes`` renames, rewords or
    drops their flags for this task; a flag with ``after`` moves behind the one it names;
    then the flags are grouped by panel, in the order of ``PANELS``.
    """
    defaults = cls()
    hints = typing.get_type_hints(cls)
    fields: list[FieldFlag] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            nested = typing.get_type_hints(type(value))
            fields += [
                _field_flag(g, nested[g.name], getattr(value, g.name)) for g in dataclasses.fields(value)
            ]
        else:
            fields.append(_field_flag(f, hints[f.name], value))
    changes = getattr(cls, "flag_changes", {})
    unknown = set(changes) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{cls.__name__}.flag_changes names no field: {', '.join(sorted(unknown))}")
    fields = [
        dataclasses.replace(f, flag=dataclasses.replace(f.flag, **changes[f.name]))
        if changes.get(f.name)
        else f
        for f in fields
        if f.name not in changes or changes[f.name] is not None
    ]
    for moved in [f for f in fields if f.flag.after]:
        fields.remove(moved)
        anchor = [f.name for f in fields].index(moved.flag.after)  # ValueError: a typo in `after`
        fields.insert(anchor + 1, moved)
    return sorted(fields, key=lambda f: PANELS.index(f.flag.panel))


def _field_flag(f: dataclasses.Field[Any], kind: Any, default: Any) -> FieldFlag:
    flag = f.metadata.get("flag")
    if not isinstance(flag, Flag):
        raise TypeError(f"option '{f.name}' declares no flag: give it one with neurodl.config.option()")
    return FieldFlag(f.name, kind, default, flag)


def _parameter(field: FieldFlag) -> inspect.Parameter:
    """The Typer parameter of one flag: its type, ``typer.Option`` and default as Typer shows it."""
    flag = field.flag
    if flag.repeat:
        kind: Any = list[str] | None
        default = None  # Typer gives None when the flag is not typed; the option's default applies
    elif flag.parse or typing.get_origin(field.kind) is tuple:
        kind = str  # typed as text (96,96,64 or all), turned into the value by _PARSERS
        value = field.default
        default = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    else:
        kind, default = field.kind, field.default
    option = typer.Option(
        *flag.names,
        help=flag.help,
        rich_help_panel=flag.panel or None,
        metavar=flag.metavar or None,
        envvar=flag.envvar or None,
    )
    return inspect.Parameter(field.name, _KEYWORD, annotation=Annotated[kind, option], default=default)


def _run_parameters(source: str, task: str) -> list[inspect.Parameter]:
    """What every ``train`` has after the task's flags: where to write, --config, --resume and how to report."""
    resume = f"Continue the interrupted run in --out (its saved options and {source} are used)."
    return [
        inspect.Parameter(
            "out",
            _KEYWORD,
            annotation=Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
            default=Path(f"runs/{task}"),
        ),
        inspect.Parameter("config", _KEYWORD, annotation=ConfigOption, default=None),
        inspect.Parameter(
            "resume",
            _KEYWORD,
            annotation=Annotated[bool, typer.Option("--resume", help=resume)],
            default=False,
        ),
        inspect.Parameter(
            "overwrite",
            _KEYWORD,
            annotation=Annotated[
                bool, typer.Option("--overwrite", help="Replace an existing run directory.")
            ],
            default=False,
        ),
        inspect.Parameter("quiet", _KEYWORD, annotation=QuietFlag, default=False),
        inspect.Parameter("json_output", _KEYWORD, annotation=JsonFlag, default=False),
    ]


def train_command(
    app: typer.Typer,
    cls: type[T],
    *,
    source: str = "manifest",
    source_help: str = IMAGE_MANIFEST,
    table: bool = False,
) -> Callable[[Callable[[Path | None, T, TrainRun], None]], Callable[..., None]]:
    """Register ``train`` on ``app`` with the flags of ``cls``; the decorated body receives the options.

    The body's docstring is the command's help; ``source`` names the positional
    argument (a manifest, or with ``table`` a CSV/TSV file); ``--out`` defaults to
    ``runs/<task>``, the task being the body's module.
    """

    def register(body: Callable[[Path | None, T, TrainRun], None]) -> Callable[..., None]:
        fields = option_flags(cls)
        parsers = {f.name: _PARSERS[f.flag.parse] for f in fields if f.flag.parse}

        def command(ctx: typer.Context, **values: Any) -> None:
            source_path = values.pop(source)
            config = values.pop("config")
            run = TrainRun(
                out=values.pop("out"),
                resume=values.pop("resume"),
                overwrite=values.pop("overwrite"),
                quiet=values.pop("quiet"),
                json_output=values.pop("json_output"),
            )
            options = resolve_options(
                cls, ctx, values, config_file=config, resume=run.resume, converters=parsers
            )
            body(source_path, options, run)

        argument = typer.Argument(help=source_help, dir_okay=not table)
        parameters = [
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
            inspect.Parameter(source, _KEYWORD, annotation=Annotated[Path | None, argument], default=None),
            *(_parameter(f) for f in fields),
            *_run_parameters(source, task=body.__module__.rsplit(".", 1)[-1]),
        ]
        # Typer reads a command's parameters from its signature (typer.utils.get_params_from_function).
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        command.__doc__ = body.__doc__
        command.__module__ = body.__module__
        command.__name__ = command.__qualname__ = "train"
        app.command("train")(command)
        return command

    return register
