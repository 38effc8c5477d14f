"""What a search leaves in its folder: the trials table, the best run, its options, the plots.

``OUT/tune.json``           the study: task, monitor, direction, counts, best trial
``OUT/trials.csv``          one row per trial, best first: value, state, options, seconds, worker, run
``OUT/best``                the best trial's run directory (a link to ``trials/trial-NNNN``)
``OUT/best_params.yaml``    the best trial's options, usable as ``--config`` of ``train``
``OUT/optimization_history.png``, ``OUT/param_importances.png``
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from neurodl.io.atomic import write_text_atomic
from neurodl.io.rundir import RunDirectory

TUNE_FILE = "tune.json"
TUNE_KIND = "neurodl-tune"


def redact(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def trial_rows(study: Any, monitor: str) -> list[dict[str, Any]]:
    """The study's trials as table rows, the best first (complete by value, then pruned, then the rest)."""
    rows = []
    sign = 1.0 if study.direction.name == "MINIMIZE" else -1.0
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name.lower(),
            monitor: t.value if t.value is not None else math.nan,
        }
        if t.state.name == "PRUNED" and t.intermediate_values:
            last = max(t.intermediate_values)
            row["pruned_at_epoch"] = last
        row.update({name: value for name, value in t.params.items()})
        row["seconds"] = t.user_attrs.get("seconds", math.nan)
        row["worker"] = t.user_attrs.get("worker", "")
        row["run"] = t.user_attrs.get("run", "")
        rows.append(row)
    order = {"complete": 0, "pruned": 1, "running": 2}

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row[monitor]
        return (order.get(row["state"], 3), sign * value if value == value else math.inf, row["trial"])

    return sorted(rows, key=key)


def best_params(study: Any, base: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The options of the best trial: those given to ``tune``, fixed by the space, and the best values found."""
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in {**base, **fixed}.items()}
    return {**given, **study.best_trial.params}


def link_best(out: Path, run: str) -> None:
    """``OUT/best`` -> the best trial's run directory (a relative link; a copy where links are refused)."""
    best = out / "best"
    temporary = out / f".best-{os.getpid()}"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    try:
        os.symlink(run, temporary, target_is_directory=True)
        os.replace(temporary, best)  # atomic: a reader sees the old best or the new one
    except OSError:
        if best.is_symlink():
            best.unlink()
        elif best.exists():
            shutil.rmtree(best)
        shutil.copytree(out / run, best, ignore=shutil.ignore_patterns("checkpoints", "cache"))


def write_results(study: Any, setup: Any, *, storage: str) -> dict[str, Any]:
    """Write the folder's summary files (see the module's documentation); return the tune summary."""
    import pandas as pd  # heavy: only once trials exist
    import yaml

    out: Path = setup.out
    writer = RunDirectory(out, "tune")  # an atomic writer for the summary files
    rows = trial_rows(study, setup.monitor)
    writer.write_csv("trials.csv", pd.DataFrame(rows))
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "complete"]
    summary: dict[str, Any] = {
        "kind": TUNE_KIND,
        "task": setup.task.name,
        "study": study.study_name,
        "storage": redact(storage),
        "input": str(setup.source.resolve()),
        "monitor": setup.monitor,
        "direction": study.direction.name.lower(),
        "trials": states,
        "space": {d.name: d.describe() for d in setup.space.dimensions},
        "fixed": {k: v for k, v in setup.space.fixed.items()},
        "base_options": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.base.items()},
        "best": None,
    }
    if complete:
        best = study.best_trial
        params = best_params(study, setup.base, setup.space.fixed)
        header = (
            f"# Best of {len(complete)} complete trials of study '{study.study_name}' ({setup.task.name}):\n"
            f"# {setup.monitor} = {best.value:.6g} (trial {best.number}, {best.user_attrs.get('run', '')}).\n"
            f"# Train it again: neurodl {setup.task.name} train {setup.source} --config best_params.yaml\n"
        )
        write_text_atomic(out / "best_params.yaml", header + yaml.safe_dump(params, sort_keys=False))
        run = str(best.user_attrs.get("run", f"trials/trial-{best.number:04d}"))
        if (out / run).is_dir():
            link_best(out, run)
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params, "run": run}
        _plots(writer, study, rows, setup.monitor)
    writer.write_json(TUNE_FILE, summary)
    return summary


def _plots(writer: RunDirectory, study: Any, rows: list[dict[str, Any]], monitor: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["trial"])
    figure = Figure(figsize=(6.4, 4.0))
    ax = figure.subplots()
    numbers = [r["trial"] for r in done]
    values = [r[monitor] for r in done]
    ax.plot(numbers, values, "o", color="tab:blue", alpha=0.7, label="trial")
    pick = min if study.direction.name == "MINIMIZE" else max
    best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
    ax.step(numbers, best_so_far, where="post", color="tab:red", label="best so far")
    pruned = [r for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.plot([], [], " ", label=f"{len(pruned)} pruned (not shown)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.set_title("Optimisation history")
    ax.legend()
    figure.tight_layout()
    writer.save_figure("optimization_history.png", figure)

    importances = _importances(study)
    if importances:
        figure = Figure(figsize=(6.4, 0.5 + 0.4 * len(importances)))
        ax = figure.subplots()
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel(f"importance for {monitor} (fANOVA)")
        ax.set_title("Hyper-parameter importances")
        figure.tight_layout()
        writer.save_figure("param_importances.png", figure)


def _importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the searched options (empty until enough trials differ)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
