"""``neurodl tune``: an Optuna study whose every trial is a normal training run.

Each trial trains the task through its library ``train`` function (no subprocess)
into ``OUT/trials/trial-NNNN``, with the options given to ``tune`` and the values
its sampler chose. The objective is the task's validation monitor at its best
epoch (``--monitor``; with ``--cv`` its mean over the folds); poor trials are
pruned from their per-epoch reports (the first fit's, i.e. fold 1's with
``--cv``). The study lives in ``--storage`` (default ``sqlite:///OUT/tune.db``):
running the command again continues it, and several processes or machines given
the same storage and ``--study`` share it, each taking the next trial until
``--trials`` have finished.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodl.config import build
from neurodl.engine.loop import Callback, FitResult
from neurodl.engine.observers import observing
from neurodl.errors import TrainingFailed, UsageError
from neurodl.tracking.extras import require_extra
from neurodl.tune.space import SearchSpace


@dataclass(frozen=True)
class TunableTask:
    """What ``tune`` needs to know of a task: its options, its train function and its monitor."""

    name: str
    module: str
    options: str
    default_monitor: Callable[[Any], str]

    def options_class(self) -> type:
        import neurodl.config as config

        return getattr(config, self.options)  # type: ignore[no-any-return]

    def train_function(self) -> Callable[..., dict[str, Any]]:
        import importlib

        return importlib.import_module(self.module).train  # type: ignore[no-any-return]

    def monitor(self, options: Any) -> str:
        return (
            str(options.train.monitor) if options.train.monitor != "auto" else self.default_monitor(options)
        )


TASKS = {
    "biomarkers": TunableTask(
        "biomarkers", "neurodl.tasks.biomarkers", "BiomarkersOptions", lambda o: "val_loss"
    ),
    "classify": TunableTask(
        "classify",
        "neurodl.tasks.classify",
        "ClassifyOptions",
        lambda o: "val_mae" if getattr(o, "task", "") == "regression" else "val_loss",
    ),
    "segment": TunableTask("segment", "neurodl.tasks.segment", "SegmentOptions", lambda o: "val_dice"),
    "autoencode": TunableTask(
        "autoencode", "neurodl.tasks.autoencode", "AutoencodeOptions", lambda o: "val_loss"
    ),
    "translate": TunableTask("translate", "neurodl.tasks.translate", "TranslateOptions", lambda o: "val_mae"),
}


def tunable_task(name: str) -> TunableTask:
    if name not in TASKS:
        raise UsageError(f"neurodl tune: unknown task '{name}'.", f"Tune one of: {', '.join(TASKS)}.")
    return TASKS[name]


def option_types(cls: type) -> dict[str, str]:
    """Flat option name -> its declared type's text (nested option sets included)."""
    types: dict[str, str] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not dataclasses.MISSING:
            nested = f.default_factory()
            if dataclasses.is_dataclass(nested):
                types.update(option_types(type(nested)))
                continue
        types[f.name] = str(f.type)
    return types


def option_value(name: str, value: Any, kind: str) -> Any:
    """A value as the command line would give it, converted the way its flag is (``"64,32"``, ``all``)."""
    if name == "batch_size" and str(value).strip().lower() in ("all", "full"):
        return 0
    if name == "hidden" and str(value).strip().lower() in ("none", "0", "linear", ""):
        return ()
    if kind.startswith("tuple") and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def build_options(task: TunableTask, values: dict[str, Any], source: str = "options") -> Any:
    """The task's frozen options from flat ``name -> value`` pairs (flags' values or a trial's).

    Raises:
        UsageError: an unknown option or a bad value (names ``source``).
    """
    cls = task.options_class()
    types = option_types(cls)
    converted = {}
    for raw, value in values.items():
        name = raw.replace("-", "_")
        if name not in types:
            raise UsageError(
                f"{source}: '{raw}' is not an option of {task.name} train.",
                f"Known options: {', '.join(sorted(types))}.",
            )
        converted[name] = option_value(name, value, types[name])
    return build(cls, converted, source=source)


def typed_values(options: Any, names: Any) -> dict[str, Any]:
    """The values of ``names`` in built options, JSON-ready (``"30"`` typed -> ``30``; tuples -> lists)."""
    from neurodl.config import to_dict

    flat: dict[str, Any] = {}
    for key, value in to_dict(options).items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return {name: flat[name] for name in names if name in flat}


def storage_url(storage: str, out: Path) -> str:
    """``--storage``: an Optuna RDB URL, a path to an SQLite file, or empty (``OUT/tune.db``)."""
    if not storage:
        return f"sqlite:///{(out / 'tune.db').resolve()}"
    if "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).resolve()}"


def open_study(url: str, name: str, direction: str) -> Any:
    """Create the study, or load it when it exists (several processes may race to create it)."""
    optuna = require_extra("optuna", "neurodl tune")
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    storage = None
    for attempt in range(6):
        try:
            # Heartbeats let a process mark the trials of a killed one as failed (they do not count).
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120
            )
            break
        except Exception as exc:  # SQLAlchemy raises many types; all mean "cannot open this storage"
            # Workers of a job array start together: all but one lose the race to create the tables.
            if (
                attempt < 5
                and "://" in url
                and any(race in str(exc) for race in ("UNIQUE", "already exists", "locked"))
            ):
                time.sleep(0.5 + random.random() * 2)
                continue
            raise UsageError(
                f"--storage {url}: cannot be opened ({type(exc).__name__}: {exc}).",
                "Give a writable SQLite path or an Optuna RDB URL (postgresql://user@host/db).",
            ) from exc
    sampler = optuna.samplers.TPESampler(n_startup_trials=5, constant_liar=True)
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, load_if_exists=True, sampler=sampler
    )
    stored = study.direction.name.lower()
    if stored != direction:
        raise UsageError(
            f"study '{name}' in {url} is {stored}d, but this search's monitor is {direction}d.",
            "Use the same --monitor as the study's first run, or another --study.",
        )
    return study


class _TrialObserver:
    """Pruning from the first fit's epochs, and each fit's best monitor value (the objective)."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.best: list[float] = []
        self.fits = 0

    def fit_callbacks(self, description: str) -> list[Callback]:
        if description.startswith("final model"):
            return []  # the model trained on every row after --cv has no validation set
        self.fits += 1
        return [_Report(self, prune=self.fits == 1)]


class _Report(Callback):
    def __init__(self, observer: _TrialObserver, prune: bool) -> None:
        self.observer, self.prune = observer, prune

    def on_epoch_end(self, record: dict[str, float]) -> None:
        value = record.get(self.observer.monitor)
        if not self.prune or value is None or value != value:
            return
        trial = self.observer.trial
        trial.report(float(value), int(record["epoch"]))
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"epoch {int(record['epoch'])}: {self.observer.monitor} {value:.4g}")

    def on_fit_end(self, result: FitResult) -> None:
        if result.monitor == self.observer.monitor and result.best_value == result.best_value:
            self.observer.best.append(float(result.best_value))


@dataclass
class TuneSetup:
    """Everything a worker needs to run trials."""

    task: TunableTask
    source: Path
    base: dict[str, Any]
    space: SearchSpace
    out: Path
    monitor: str
    pruner: str = "median"

    @property
    def direction(self) -> str:
        """The study's direction: ``minimize`` a loss or error, ``maximize`` a score (as the monitor's mode)."""
        from neurodl.engine.loop import monitor_mode  # heavy (torch): only when a study is opened

        return "minimize" if monitor_mode(self.monitor) == "min" else "maximize"


def run_trial(setup: TuneSetup, trial: Any, console: Any = None) -> float:
    """Train one trial's run directory and return its objective (the monitor at the best epoch)."""
    import optuna

    from neurodl.tracking import tracked

    params = setup.space.suggest(trial)
    options = build_options(setup.task, {**setup.base, **params}, source=f"trial {trial.number}")
    run_dir = setup.out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run", str(run_dir.relative_to(setup.out)))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    observer = _TrialObserver(trial, setup.monitor)
    train = setup.task.train_function()
    tic = time.perf_counter()
    try:
        with observing(observer), tracked(options.train, run_dir, task=setup.task.name, console=console) as t:
            summary = train(
                setup.source, options, run_dir, resume=False, overwrite=True, console=None, quiet=True
            )
            t.summary = summary
    except TrainingFailed as exc:
        # A diverged trial is a poor trial: it counts as tried, like a pruned one.
        trial.set_user_attr("failed", exc.message)
        raise optuna.TrialPruned(exc.message) from exc
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - tic, 2))
    if not observer.best:
        raise UsageError(
            f"trial {trial.number}: the run reported no '{setup.monitor}' on a validation set.",
            "Give --monitor with a validation metric of this task (see its history.csv), and keep a validation split.",
        )
    value = sum(observer.best) / len(observer.best)
    trial.set_user_attr("epochs", summary.get("epochs"))
    trial.set_user_attr("folds", len(observer.best))
    return value


def finished_count(study: Any) -> int:
    """Trials that count towards ``--trials``: finished (complete or pruned) or running in some process."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(
    setup: TuneSetup,
    *,
    trials: int,
    storage: str,
    study_name: str,
    console: Any = None,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> Any:
    """Run trials until the study holds ``trials`` finished ones (other processes' included); return it."""
    import warnings

    optuna = require_extra("optuna", "neurodl tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats (failing a killed process's trials) are "experimental" in Optuna; say it once, not per trial.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = open_study(storage_url(storage, setup.out), study_name, setup.direction)
    if setup.pruner == "median":
        # Prune a trial whose monitor is worse than the median of earlier trials at the same epoch.
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    else:
        study.pruner = optuna.pruners.NopPruner()
    failures = 0
    while finished_count(study) < trials and failures < trials:
        before = len(study.trials)
        study.optimize(
            lambda trial: run_trial(setup, trial, console),
            n_trials=1,
            callbacks=[on_trial] if on_trial else None,
            gc_after_trial=True,
        )
        latest = study.trials[before:] if len(study.trials) > before else []
        failures += sum(1 for t in latest if t.state.name == "FAIL")
    return study
