"""MLflow: a run per ``train`` (a nested run per fold of ``--cv``), in a local SQLite store or a lab's server.

Logged: the resolved options as params (flag names: ``lr``, ``hidden``...), every
epoch's metrics with the epoch as step, the final and held-out metrics of
``metrics.json`` (``validation.auc``, ``test.accuracy``...; each fold's in its
nested run), the run directory's small files as artifacts, and tags
``neurodl.task``, ``neurodl.model``, ``neurodl.data_sha256`` and ``neurodl.run_dir``.

Where: ``--track-uri`` (or ``MLFLOW_TRACKING_URI``, read by the command line);
by default ``sqlite:///DIR/mlflow.db`` with artifacts in ``DIR/mlartifacts``,
DIR being the folder that holds the run directory, so the runs of one project
share one store: ``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from neurodl.engine.loop import Callback, FitResult
from neurodl.tracking.extras import require_extra
from neurodl.tracking.session import Backend, RunInfo, flat_options, numeric_leaves

# MLflow's REST client retries a refused connection 7 times with exponential back-off (minutes);
# a tracker that cannot reach its server should give up in seconds and let training go on.
HTTP_RETRIES = "2"
HTTP_TIMEOUT_S = "20"
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call


def default_uri(run_dir: Path) -> str:
    """The local store beside the run directory: ``sqlite:///DIR/mlflow.db``."""
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def _local_artifacts(uri: str) -> str | None:
    """Artifact folder for an experiment created in a local SQLite store (beside the database)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


class MlflowBackend(Backend):
    """Logs one training command to MLflow (see the module's documentation)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_dir: Path) -> None:
        # Fail before training starts when the library is missing (exit 2, naming the extra).
        require_extra("mlflow", "--track mlflow")
        self.uri = uri or default_uri(run_dir)
        self.experiment = experiment
        self.client: Any = None
        self.run_id = ""
        self.folds: dict[str, str] = {}

    def start(self, run: RunInfo) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
        for name in ("mlflow", "alembic"):
            # Their INFO lines (creating the store's tables) are not for the user of a training run.
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment_id()
        tags = {
            "neurodl.task": run.task,
            "neurodl.data_sha256": run.input_sha256,
            "neurodl.input": run.input,
            "neurodl.run_dir": str(run.path.resolve()),
        }
        if run.model:
            tags["neurodl.model"] = run.model
        created = self.client.create_run(experiment_id, run_name=run.path.name, tags=tags)
        self.run_id = created.info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_options(run.options).items()]
        params.append(Param("input", run.input[:6000]))
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(
                self.client.create_experiment(self.experiment, artifact_location=_local_artifacts(self.uri))
            )
        except Exception:
            # Another process (a tune worker) created it meanwhile.
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def fit_callback(self, run: RunInfo, fit: str) -> Callback | None:
        if not fit:
            return _EpochMetrics(self.client, self.run_id)
        if fit not in self.folds:
            child = self.client.create_run(
                self.client.get_run(self.run_id).info.experiment_id,
                run_name=fit,
                tags={"mlflow.parentRunId": self.run_id, "neurodl.task": run.task, "neurodl.fold": fit},
            )
            self.folds[fit] = child.info.run_id
        return _EpochMetrics(self.client, self.folds[fit])

    def finish(self, run: RunInfo, status: str) -> None:
        metrics = run.metrics()
        folds = metrics.pop("folds", None)
        if isinstance(folds, list):
            for k, fold in enumerate(folds, start=1):
                if f"fold-{k}" in self.folds:
                    self._log_metrics(self.folds[f"fold-{k}"], numeric_leaves({"test": fold}))
        self._log_metrics(self.run_id, numeric_leaves(metrics))
        if run.model:
            self.client.set_tag(self.run_id, "neurodl.model", run.model)
        for file in run.small_files():
            folder = file.parent.relative_to(run.path)
            self.client.log_artifact(self.run_id, str(file), None if str(folder) == "." else str(folder))
        for child in self.folds.values():
            self.client.set_terminated(child, status)
        self.client.set_terminated(self.run_id, status)

    def _log_metrics(self, run_id: str, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, 0) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])


class _EpochMetrics(Callback):
    """Every epoch's record (losses, metrics, learning rate, seconds) with the epoch as step."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def on_epoch_end(self, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        step = int(record["epoch"])
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in record.items() if k != "epoch"],
        )

    def on_fit_end(self, result: FitResult) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = result.epochs_run
        chosen = [Metric("best_epoch", float(result.best_epoch), now, step)]
        if result.best_value == result.best_value:  # not NaN
            chosen.append(Metric(f"best_{result.monitor}", float(result.best_value), now, step))
        self.client.log_batch(self.run_id, metrics=chosen)
