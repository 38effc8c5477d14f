"""`--track mlflow|tensorboard`: what a lab's tracking tools hold after a run, read back with their own readers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

FAST = ["--epochs", "6", "--patience", "0", "--lr", "0.05", "--quiet"]


def make_table(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    level = np.arange(n) % 2
    frame = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "diagnosis": np.where(level == 1, "AD", "CN"),
            "csf_volume_ml": (150 + 60 * level + rng.normal(0, 25, n)).round(2),
            "brain_metabolism": (1.2 - 0.3 * level + rng.normal(0, 0.15, n)).round(4),
        }
    )
    frame.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(autouse=True)
def no_tracking_uri_in_environment(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which `--track-uri` reads: keep tests apart."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def runs_of(uri: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


@pytest.mark.slow
def test_mlflow_sqlite_store_holds_params_metrics_per_epoch_artifacts_and_tags(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.tsv")
    run = tmp_path / "runs" / "dx"
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = run_cli(
        "biomarkers", "train", table, "--hidden", "8", *FAST,
        "--track", "mlflow", "--track-uri", uri, "--experiment", "dementia", "--out", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    runs = runs_of(uri, "dementia")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.lr"] == "0.05" and row["params.hidden"] == "8" and row["params.epochs"] == "6"
    assert row["tags.neurodl.task"] == "biomarkers" and row["tags.neurodl.model"] == "mlp"
    assert (
        row["tags.neurodl.data_sha256"]
        == json.loads((run / "config.json").read_text())["options"]["input_sha256"]
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["metrics.validation.accuracy"] == pytest.approx(metrics["validation"]["accuracy"])
    client = mlflow.tracking.MlflowClient(uri)
    history = pd.read_csv(run / "history.csv")
    logged = client.get_metric_history(row["run_id"], "val_loss")
    assert [m.step for m in logged] == list(history["epoch"])
    assert [m.value for m in logged] == pytest.approx(list(history["val_loss"]))
    artifacts = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"metrics.json", "history.csv", "config.json", "learning_curves.png", "report.html"} <= artifacts
    assert not any(a.startswith("checkpoints") or a.endswith(".safetensors") for a in artifacts)


@pytest.mark.slow
def test_mlflow_folds_of_cv_are_nested_runs_with_their_test_metrics(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.tsv")
    run = tmp_path / "runs" / "cv"
    result = run_cli(
        "biomarkers", "train", table, "--hidden", "none", "--cv", "3", *FAST, "--track", "mlflow", "--out", run
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # The default store: an SQLite file beside the run directory, the task as experiment.
    runs = runs_of(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "biomarkers")
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    folds = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(folds) == 3
    assert set(folds["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    assert set(folds["tags.mlflow.runName"]) == {"fold-1", "fold-2", "fold-3"}
    metrics = json.loads((run / "metrics.json").read_text())
    fold2 = folds[folds["tags.mlflow.runName"] == "fold-2"].iloc[0]
    assert fold2["metrics.test.accuracy"] == pytest.approx(metrics["folds"][1]["accuracy"])
    assert parent.iloc[0]["metrics.mean_std.accuracy.mean"] == pytest.approx(
        metrics["mean_std"]["accuracy"]["mean"]
    )
    assert (folds["status"] == "FINISHED").all()


def test_unreachable_tracking_server_warns_once_and_the_run_completes(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    table = make_table(tmp_path / "cohort.tsv")
    run = tmp_path / "run"
    result = run_cli(
        "biomarkers", "train", table, *FAST, "--track", "mlflow", "--track-uri", "http://127.0.0.1:9", "--out", run
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("--track mlflow") == 1
    assert "goes on without mlflow" in result.stderr
    assert (run / "model.safetensors").exists() and (run / "metrics.json").exists()


def test_tensorboard_events_hold_every_epoch_and_the_plots(run_cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    table = make_table(tmp_path / "cohort.tsv")
    run = tmp_path / "run"
    result = run_cli("biomarkers", "train", table, *FAST, "--track", "tensorboard", "--out", run)
    assert result.exit_code == 0, result.stderr
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    history = pd.read_csv(run / "history.csv")
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(events.Tags()["scalars"])
    val_loss = events.Scalars("val_loss")
    assert [e.step for e in val_loss] == list(history["epoch"])
    assert [e.value for e in val_loss] == pytest.approx(list(history["val_loss"]), rel=1e-6)
    assert "plots/learning_curves" in events.Tags()["images"]
    assert "final/validation.accuracy" in events.Tags()["scalars"]


@pytest.mark.slow
def test_an_image_task_logs_its_held_out_test_metrics_and_tensorboard_events(run_cli, tmp_path):
    """classify goes through the image tasks' shared train-and-report path."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from neurodl.data.phantom import generate_cohort

    generate_cohort(tmp_path / "cohort", n=12, size=24, seed=3)
    run = tmp_path / "runs" / "cnn"
    result = run_cli(
        "classify", "train", tmp_path / "cohort" / "participants.tsv", "--image", "t1", "--label", "diagnosis",
        "--test-fraction", "0.25", "--model", "cnn", "--depth", "2", "--width", "4", "--epochs", "2",
        "--batch-size", "4", "--augment", "none", "--quiet",
        "--track", "mlflow", "--track", "tensorboard", "--out", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    runs = runs_of(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "classify")
    assert len(runs) == 1
    row = runs.iloc[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["metrics.test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert row["tags.neurodl.model"] == "cnn" and row["params.image"] == "t1"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("val_loss")) == 2


def test_tensorboard_logs_a_tasks_preview_images_at_their_epoch(tmp_path):
    """Translate writes previews/epoch-NNN.png each epoch; each becomes an image at that step."""
    from matplotlib.figure import Figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from neurodl.config import TrainOptions
    from neurodl.engine import FitResult
    from neurodl.tracking import TrackingSession

    run = tmp_path / "run"
    (run / "previews").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "translate", "options": {"model": "unet"}}))
    session = TrackingSession(TrainOptions(track=("tensorboard",)), run, task="translate")
    [callback] = session.fit_callbacks("training")
    callback.on_fit_start(epochs=2, steps=1, start_epoch=0)
    for epoch in (1, 2):
        figure = Figure(figsize=(1, 1))
        figure.subplots().imshow(np.eye(4))
        figure.savefig(run / "previews" / f"epoch-{epoch:03d}.png")
        callback.on_epoch_end({"epoch": epoch, "train_loss": 1.0 / epoch})
    callback.on_fit_end(FitResult())
    session.finish({"epochs": 2}, "FINISHED")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("preview")] == [1, 2]


def test_missing_tracking_library_is_a_usage_error_naming_the_extra(run_cli, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_mlflow)
    monkeypatch.delitem(__import__("sys").modules, "mlflow", raising=False)
    table = make_table(tmp_path / "cohort.tsv")
    result = run_cli("biomarkers", "train", table, *FAST, "--track", "mlflow", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "pip install 'neurodl[mlflow]'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_tracker_is_refused(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.tsv")
    result = run_cli("biomarkers", "train", table, *FAST, "--track", "wandb", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "mlflow, tensorboard" in result.stderr


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from neurodl.data.phantom import generate_cohort
    from neurodl_testing.engine import torchrun

    generate_cohort(tmp_path / "cohort", n=10, size=24, seed=5)
    run = tmp_path / "runs" / "cnn"
    done = torchrun(
        "-m", "neurodl", "classify", "train", tmp_path / "cohort" / "participants.tsv", "--image", "t1",
        "--model", "cnn", "--depth", "2", "--width", "4", "--size", "16", "--spacing", "1.5", "--epochs", "2",
        "--batch-size", "2", "--augment", "none", "--quiet", "--distributed",
        "--track", "mlflow", "--track", "tensorboard", "--out", run,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_of(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "classify")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2]
