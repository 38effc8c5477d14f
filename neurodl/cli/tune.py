"""``neurodl tune``: hyper-parameter search (Optuna) over a task's ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import ConfigOption, JsonFlag, QuietFlag
from neurodl.errors import UsageError

_S = "Search"


def parse_task_options(args: list[str], bool_options: set[str]) -> dict[str, Any]:
    """The task's own flags after the manifest (``--target dx --hidden 64,32 --cv 5``) as ``name -> value``.

    A flag given several times (``--image t1 --image t2``) becomes a list; a
    boolean option may stand alone (``--crop-foreground``).
    """
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(
                f"neurodl tune: unexpected argument '{token}'.",
                "Give the task's options by their long names after the manifest, e.g. --target diagnosis --cv 5.",
            )
        name, has_value, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if not has_value:
            if key in bool_options and (i + 1 == len(args) or args[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise UsageError(f"neurodl tune: option --{name} needs a value.")
        if key in values:
            previous = values[key]
            values[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            values[key] = value
        i += 1
    return values


def tune(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Argument(help="Task to tune: biomarkers, classify, segment, autoencode or translate.")
    ],
    source: Annotated[
        Path,
        typer.Argument(
            help="The table or manifest to train on; the task's options follow it.", dir_okay=False
        ),
    ],
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            "-n",
            help="Trials the study is to hold (all processes together); running again with more continues it.",
            rich_help_panel=_S,
        ),
    ] = 20,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Tune directory: trials/, best/, best_params.yaml, trials.csv."),
    ] = Path("runs/tune"),
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            help="YAML/JSON search space laid over the task's default (lr: {low: 1.0e-4, high: 0.1, log: true}, optimizer: \\[sgd, adam]).",
            dir_okay=False,
            rich_help_panel=_S,
        ),
    ] = None,
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            help="Optuna storage shared by every process of the search: an SQLite file or an RDB URL (postgresql://...); default: OUT/tune.db.",
            rich_help_panel=_S,
        ),
    ] = "",
    study: Annotated[
        str,
        typer.Option("--study", help="Study name in the storage (default: the task).", rich_help_panel=_S),
    ] = "",
    pruner: Annotated[
        str,
        typer.Option(
            "--pruner",
            help="median: stop a trial whose monitor is worse than the earlier trials' median at the same epoch; none.",
            rich_help_panel=_S,
        ),
    ] = "median",
    config: ConfigOption = None,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Search a task's options with Optuna; every trial is a run directory under --out.

    The objective is the task's validation monitor at its best epoch (--monitor; with --cv
    the mean over the folds). Several processes or machines given the same --storage and
    --study share the search.

    Example: neurodl tune biomarkers sample_data/participants.tsv --target diagnosis --trials 20 --out runs/tune-dx
    """
    from neurodl.config import load_config_file
    from neurodl.tracking.extras import require_extra

    require_extra("optuna", "neurodl tune")
    from neurodl.tune.results import write_results
    from neurodl.tune.space import SearchSpace
    from neurodl.tune.study import (
        TuneSetup,
        build_options,
        option_types,
        run_study,
        storage_url,
        tunable_task,
        typed_values,
    )

    if pruner not in ("median", "none"):
        raise UsageError(f"--pruner '{pruner}' is not one of: median, none.")
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, not {trials}.")
    if not source.is_file():
        raise UsageError(f"{source}: file does not exist.", "Give the table or manifest to train on.")
    spec = tunable_task(task)
    types = option_types(spec.options_class())
    base = load_config_file(config) if config else {}
    base.update(parse_task_options(list(ctx.args), {k for k, v in types.items() if v == "bool"}))
    for reserved in ("out", "resume", "overwrite"):
        base.pop(reserved, None)
    if str(base.get("distributed", "false")).lower() in ("true", "1", "yes"):
        raise UsageError(
            "neurodl tune trains each trial in its own process: --distributed is not a tuning option.",
            "Drop --distributed; run several tune workers on one --storage instead (docs/scaling.md).",
        )
    search = SearchSpace.for_task(task, space)
    unknown = [d.name for d in search.dimensions if d.name not in types] + [
        k for k in search.fixed if k not in types
    ]
    if unknown:
        raise UsageError(
            f"{space or 'the search space'}: '{unknown[0]}' is not an option of {task} train.",
            f"Known options: {', '.join(sorted(types))}.",
        )
    options = build_options(spec, base, source=str(config) if config else "options")
    base = typed_values(options, [k.replace("-", "_") for k in base])
    monitor = spec.monitor(options)
    setup = TuneSetup(spec, source, base, search, out, monitor, pruner)
    out.mkdir(parents=True, exist_ok=True)
    console = err_console()

    def show(study: Any, trial: Any) -> None:
        if quiet:
            return
        value = f"{trial.value:.4g}" if trial.value is not None else trial.state.name.lower()
        best = f"{study.best_value:.4g}" if any(t.state.name == "COMPLETE" for t in study.trials) else "-"
        console.print(
            f"trial {trial.number}: {monitor} {value}  (best {best})  {trial.user_attrs.get('run', '')}",
            highlight=False,
        )

    name = study or task
    found = run_study(setup, trials=trials, storage=storage, study_name=name, console=console, on_trial=show)
    summary = write_results(found, setup, storage=storage_url(storage, out))
    summary["out"] = str(out)
    from neurodl.tune.report import write_tune_report

    summary["report"] = str(write_tune_report(out))
    if json_output:
        print_json(summary)
    if not quiet:
        best = summary["best"]
        if best:
            console.print(
                f"Best: trial {best['trial']}, {monitor} {best['value']:.4g} ({out / 'best'}); "
                f"options in {out / 'best_params.yaml'} (use with --config). Trials: {summary['trials']}."
            )
            console.print(f"Report: {summary['report']}; trials side by side: neurodl compare {out}")
        else:
            console.print(f"No trial completed yet. Trials: {summary['trials']}.")
