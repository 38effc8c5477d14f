"""`neurodl compare`: runs side by side, sorted by a metric, as a table, JSON and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurodl_testing import DX, SAMPLE

PNG = b"\x89PNG\r\n\x1a\n"


def test_table_shows_the_option_that_differs_and_the_metrics(run_cli, dx_runs):
    result = run_cli("compare", *dx_runs)
    assert result.exit_code == 0, result.output
    for text in (
        "lr-0.01",
        "lr-0.1",
        "biomarkers",
        "mlp",
        "lr",
        "best epoch",
        "balanced_accuracy",
        "roc_auc",
    ):
        assert text in result.stderr, text
    assert "optimizer" not in result.stderr  # the same in both runs
    assert result.stdout == ""


def test_json_sorted_by_metric(run_cli, dx_runs, severity_cv_run):
    result = run_cli("compare", *dx_runs, severity_cv_run, "--metric", "rmse", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["metric"] == "rmse"
    assert [r["label"] for r in payload["runs"]][0] == "severity-cv"  # the only run with an RMSE comes first
    cv = payload["runs"][0]
    folds = json.loads((severity_cv_run / "metrics.json").read_text())["folds"]
    fold_rmse = [fold["rmse"] for fold in folds]
    assert cv["metrics"]["rmse"] == pytest.approx(sum(fold_rmse) / 3)
    assert (
        cv["metrics_std"]["rmse"] == pytest.approx(float(np.std(fold_rmse))) and cv["metrics_std"]["rmse"] > 0
    )
    assert cv["metrics"]["accuracy"] is None and cv["best"] is True
    assert cv["options"]["target"] == "severity" and cv["options"]["cv"] == 3
    dx = payload["runs"][1]
    assert dx["task"] == "biomarkers" and dx["model"] == "mlp" and dx["finished"] is True
    assert dx["epochs_run"] == 3 and 1 <= dx["best_epoch"] <= 3
    assert 0 <= dx["metrics"]["balanced_accuracy"] <= 1 and dx["metrics"]["rmse"] is None
    assert {"lr", "target", "features", "cv"} <= set(payload["options"])


def test_runs_of_different_tasks(run_cli, dx_runs, ae_run):
    result = run_cli("compare", dx_runs[0], ae_run, "--json")
    assert result.exit_code == 0, result.output
    runs = {r["label"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs["ae"]["task"] == "autoencode" and runs["ae"]["metrics"]["psnr"] is not None
    assert runs["ae"]["metrics"]["roc_auc"] is None
    assert "—" in result.stderr  # an absent metric, shown as a dash


def test_unknown_metric_lists_the_available_ones(run_cli, dx_runs):
    result = run_cli("compare", *dx_runs, "--metric", "dice")
    assert result.exit_code == 2
    assert "no metric 'dice'" in result.stderr
    assert "balanced_accuracy" in result.stderr and "roc_auc" in result.stderr


def test_missing_or_foreign_run_exits_2(run_cli, dx_runs, tmp_path):
    missing = run_cli("compare", dx_runs[0], tmp_path / "nope")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "other").mkdir()
    foreign = run_cli("compare", dx_runs[0], tmp_path / "other")
    assert foreign.exit_code == 2 and "not a neurodl run directory" in foreign.stderr


def test_plot_and_curves_are_pngs(run_cli, dx_runs, severity_cv_run, tmp_path):
    bar, curves = tmp_path / "bar.png", tmp_path / "curves.png"
    result = run_cli("compare", *dx_runs, severity_cv_run, "--plot", bar, "--curves", curves, "--quiet")
    assert result.exit_code == 0, result.output
    for path in (bar, curves):
        assert path.read_bytes().startswith(PNG), path


def test_figure_inside_a_run_is_refused(run_cli, dx_runs):
    result = run_cli("compare", *dx_runs, "--plot", Path(dx_runs[0]) / "learning_curves.png")
    assert result.exit_code == 2 and "inside the run directory" in result.stderr
    assert (Path(dx_runs[0]) / "learning_curves.png").read_bytes().startswith(PNG)


def test_curves_switch_to_a_log_scale_for_a_diverging_run(dx_runs, tmp_path):
    import csv
    import shutil

    from neurodl.report.compare import compare_runs, learning_curves_overlay

    diverged = tmp_path / "lr-huge"
    shutil.copytree(dx_runs[0], diverged)
    with open(diverged / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for k, row in enumerate(rows):
        row["train_loss"] = row["val_loss"] = str(10.0 ** (3 * k))
    with open(diverged / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    calm = learning_curves_overlay(compare_runs(dx_runs))
    assert calm.axes[0].get_yscale() == "linear"
    wild = learning_curves_overlay(compare_runs([*dx_runs, diverged]))
    assert wild.axes[0].get_yscale() == "log"
    labels = [t.get_text() for t in wild.axes[0].get_legend().get_texts()]
    assert labels[:3] == ["lr-0.01", "lr-0.1", "lr-huge"] and "training" in labels


def test_a_run_without_hidden_layers_shows_no_activation_or_dropout(run_cli, dx_runs, runs):
    logistic = runs / "logistic"
    run_cli(
        "biomarkers", "train", SAMPLE, *DX, "--hidden", "none", "--epochs", "2", "--out", logistic, "--quiet"
    )
    result = run_cli("compare", dx_runs[0], logistic, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    by_label = {r["label"]: r for r in json.loads(result.stdout)["runs"]}
    assert by_label["logistic"]["options"]["activation"] is None
    assert by_label["logistic"]["options"]["dropout"] is None
    assert by_label["lr-0.01"]["options"]["activation"] == "relu"
