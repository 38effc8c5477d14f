"""The commands that use a trained model (``predict``, ``evaluate``, ``sample``...), built around the flags they share.

Every such command takes ``--model`` first and ends with some of ``--overwrite``,
``--shard``, ``--workers``, ``--device``, ``--quiet`` and ``--json``; an image task's
``evaluate`` also takes the manifest, ``--out``, ``--allow-overlap`` and
``--bids-filter``. Each of these is declared once, as a field of :class:`ModelRun` or
:class:`Evaluation`. :func:`model_command` and :func:`evaluate_command` build the
command's Typer signature from them and the body's own parameters (as
:mod:`neurodl.cli._train_command` does for ``train``), and hand the body their values
in one object, its first argument.

Example:
    >>> @model_command(app, "interpret", BATCH)
    ... def interpret(run: ModelRun, inputs: ImageInputs, method: str = "gradcam") -> None:
    ...     '''Explain predictions...'''  # --model INPUTS --method --overwrite --shard --device --quiet --json
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from neurodl.cli._options import (
    AllowOverlapFlag,
    BidsFilter,
    DeviceOption,
    JsonFlag,
    ModelDirOption,
    OverwriteFlag,
    PredictWorkers,
    QuietFlag,
    ShardOption,
)

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class ModelRun:
    """The trained model a command uses, and what its shared flags said (defaults for those it lacks).

    The fields after ``model`` are the shared flags, in ``--help`` order.
    """

    model: ModelDirOption
    overwrite: OverwriteFlag = False
    shard: ShardOption = None
    workers: PredictWorkers = 2
    device: DeviceOption = "auto"
    quiet: QuietFlag = False
    json_output: JsonFlag = False

    def batch(self, on_image: Callable[[Any], None], **more: Any) -> dict[str, Any]:
        """The keywords of a per-image task function (its ``BatchSettings``) from the shared flags: ``overwrite``,
        ``shard``, ``on_image`` (e.g. a progress bar's advance), and ``more`` (e.g. ``preview``)."""
        return {"overwrite": self.overwrite, "shard": self.shard, "on_image": on_image, **more}


@dataclass(frozen=True, kw_only=True)
class Evaluation(ModelRun):
    """An ``evaluate`` of an image task: the manifest scored, where the report goes, which rows count."""

    manifest: Path
    out: Path | None = None
    allow_overlap: AllowOverlapFlag = False
    bids_filter: BidsFilter = None


# The shared flags of the commands that process many inputs; of those whose output is one table, on
# stdout or -o (the table is what a machine reads: no --json); of those that make or score one result.
BATCH = ("overwrite", "shard", "device", "quiet", "json_output")
TABLE = ("overwrite", "shard", "device", "quiet")
SINGLE = ("overwrite", "device", "quiet", "json_output")

_REPORT = "Folder for per_image.csv and metrics.json."


def model_command(
    app: typer.Typer, name: str, flags: Sequence[str]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``name`` on ``app``: ``--model``, the body's own parameters, then the shared ``flags``.

    ``flags`` names fields of :class:`ModelRun` (e.g. :data:`BATCH`); the body gets a
    ``ModelRun`` first, then its own parameters by name. Its docstring is the help.
    """
    shared = _fields(ModelRun)
    unknown = set(flags) - set(shared)
    if unknown:
        raise TypeError(f"not a shared flag of a model's command: {', '.join(sorted(unknown))}")
    tail = [shared[name] for name in shared if name in flags]  # in --help order, whatever the order given

    def register(body: Callable[..., None]) -> Callable[..., None]:
        return _register(app, name, body, ModelRun, head=[shared["model"]], tail=tail)

    return register


def evaluate_command(
    app: typer.Typer, manifest: str, *, after: str, out: str = _REPORT
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register an image task's ``evaluate`` on ``app``; the body gets an :class:`Evaluation` first.

    The flags: ``--model``, the manifest argument (help ``manifest``), the body's own up to
    ``after`` (the column scored), ``--out`` (help ``out``), ``--allow-overlap``,
    ``--bids-filter``, the body's others, then ``--overwrite``, ``--device``, ``--quiet``
    and ``--json``.
    """
    shared = _fields(Evaluation)
    shared["manifest"] = shared["manifest"].replace(annotation=Annotated[Path, typer.Argument(help=manifest)])
    shared["out"] = shared["out"].replace(
        annotation=Annotated[Path | None, typer.Option("--out", "-o", help=out, file_okay=False)]
    )

    def register(body: Callable[..., None]) -> Callable[..., None]:
        return _register(
            app,
            "evaluate",
            body,
            Evaluation,
            head=[shared["model"], shared["manifest"]],
            tail=[shared[name] for name in SINGLE],
            inserted=[shared["out"], shared["allow_overlap"], shared["bids_filter"]],
            after=after,
        )

    return register


def _fields(cls: type) -> dict[str, inspect.Parameter]:
    """The Typer parameters of the flags declared as ``cls``'s fields, by name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        f.name: inspect.Parameter(
            f.name,
            _KEYWORD,
            annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
        )
        for f in dataclasses.fields(cls)
    }


def _register(
    app: typer.Typer,
    name: str,
    body: Callable[..., None],
    run_class: type,
    *,
    head: list[inspect.Parameter],
    tail: list[inspect.Parameter],
    inserted: Sequence[inspect.Parameter] = (),
    after: str | None = None,
) -> Callable[..., None]:
    hints = typing.get_type_hints(body, include_extras=True)
    own = [
        inspect.Parameter(p.name, _KEYWORD, annotation=hints[p.name], default=p.default)
        for p in list(inspect.signature(body).parameters.values())[1:]  # the first is the run
    ]
    if after is not None:
        at = [p.name for p in own].index(after) + 1  # ValueError: `after` names none of the body's
        own[at:at] = inserted
    parameters = [*head, *own, *tail]
    shared = [p.name for p in (*head, *inserted, *tail)]

    def command(**values: Any) -> None:
        run = run_class(**{key: values.pop(key) for key in shared})
        body(run, **values)

    # Typer reads a command's parameters from its signature (typer.utils.get_params_from_function).
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = body.__doc__
    command.__module__ = body.__module__
    command.__name__ = command.__qualname__ = body.__name__
    app.command(name)(command)
    return command
