"""Image regression (`neurodl classify train --label age`): brain age from the MRI, on tiny phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurodl.config import ClassifyOptions
from neurodl.data.phantom import generate_cohort

TINY = [
    "--image", "t1", "--model", "cnn", "--depth", "1", "--width", "2", "--size", "16",
    "--augment", "none", "--epochs", "2", "--batch-size", "4", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=10, size=16, seed=1)
    return root / "participants.tsv"


@pytest.fixture(scope="module")
def brain_age(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "brain-age"
    command = ["classify", "train", str(cohort), "--label", "age", "--color-by", "diagnosis"]
    assert main([*command, "--test-fraction", "0.3", "--out", str(run), *TINY]) == 0
    return run


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_age_trains_a_regressor_not_a_many_class_classifier(brain_age: Path, cohort: Path) -> None:
    prep = read_json(brain_age / "preprocessing.json")
    assert prep["label"]["kind"] == "regression" and prep["label"]["classes"] == []
    assert prep["model"]["out_features"] == 1
    test = read_json(brain_age / "metrics.json")["test"]
    assert {"mae", "rmse", "r2", "pearson_r", "baseline_mae"} <= set(test) and "accuracy" not in test
    for plot in ("test_predicted_vs_true.png", "test_residuals_by_diagnosis.png", "report.html"):
        assert (brain_age / plot).is_file(), plot
    assert "val_mae" in pd.read_csv(brain_age / "history.csv").columns
    # Standardised on the training rows only: the final model's mean age is theirs.
    splits = read_json(brain_age / "splits.json")
    ages = pd.read_csv(cohort, sep="\t").set_index("participant_id")["age"]
    assert prep["label"]["center"] == pytest.approx(ages[splits["train"]].mean())
    assert prep["label"]["center"] != pytest.approx(ages.mean())


def test_compare_sorts_regression_runs_by_mae_lowest_first(run_cli, brain_age: Path, tmp_path: Path) -> None:
    import shutil

    worse = tmp_path / "worse"
    shutil.copytree(brain_age, worse)
    metrics = read_json(worse / "metrics.json")
    metrics["test"]["mae"] += 5.0
    (worse / "metrics.json").write_text(json.dumps(metrics))
    result = run_cli("compare", worse, brain_age, "--metric", "mae", "--json")
    assert result.exit_code == 0, result.output
    assert [run["label"] for run in json.loads(result.stdout)["runs"]] == ["brain-age", "worse"]


def test_early_stopping_and_reports_agree_that_a_lower_mae_is_better(brain_age: Path) -> None:
    from neurodl.config import lower_is_better
    from neurodl.engine.loop import monitor_mode
    from neurodl.report.summary import summarize_run

    summary = summarize_run(brain_age)
    assert summary.monitor == "val_mae"
    assert monitor_mode(summary.monitor) == "min" and lower_is_better("val_mae")
    history = pd.read_csv(brain_age / "history.csv")
    assert summary.best_epoch == int(history.loc[history["val_mae"].idxmin(), "epoch"])


@pytest.mark.parametrize(
    ("values", "task", "kind"),
    [
        ([59, 70, 72, 62, 81, 66, 75, 64], "auto", "regression"),  # age: many integer levels
        ([0.5, 1.5, 0.5, 1.5, 0.5, 1.5], "auto", "regression"),  # not integers
        (["CN", "AD", "CN", "AD"], "auto", "classification"),
        ([0, 1, 2, 0, 1, 2], "auto", "classification"),  # a grade: at most 5 integer levels
        ([0, 1, 2, 0, 1, 2], "regression", "regression"),  # --task overrides the rule ...
        ([59, 70, 72, 62, 81, 66, 75, 64], "classification", "classification"),  # ... both ways
    ],
)
def test_the_label_rule_is_the_biomarkers_rule_and_task_overrides_it(values, task, kind) -> None:
    from neurodl.tasks.classify import label_target

    options = ClassifyOptions(label="y", task=task)
    assert label_target(pd.Series(values), options, Path("m.tsv")).kind == kind


@pytest.mark.slow
def test_explicit_task_regression_trains_a_regressor_on_few_levels(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    table = pd.read_csv(cohort, sep="\t")
    table["grade"] = np.arange(len(table)) % 3  # three integer levels: classes by the rule
    manifest = cohort.parent / "graded.tsv"
    table.to_csv(manifest, sep="\t", index=False)
    for task, kind in (("auto", "classification"), ("regression", "regression")):
        out = tmp_path / task
        result = run_cli(
            "classify", "train", manifest, "--label", "grade", "--task", task, *TINY, "--out", out
        )
        assert result.exit_code == 0, result.output
        assert read_json(out / "preprocessing.json")["label"]["kind"] == kind


def test_a_non_numeric_label_with_task_regression_exits_2_naming_the_column(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "classify", "train", cohort, "--label", "diagnosis", "--task", "regression", *TINY, "--out", out
    )
    assert result.exit_code == 2
    assert "'diagnosis'" in result.output and "not numeric" in result.output
    assert "--task classification" in result.output and "Traceback" not in result.output
    assert not (out / "model.safetensors").exists()


def test_a_regression_loss_on_classes_is_refused(run_cli, cohort: Path, tmp_path: Path) -> None:
    result = run_cli(
        "classify", "train", cohort, "--label", "diagnosis", "--loss", "l1", *TINY, "--out", tmp_path / "r"
    )
    assert result.exit_code == 2 and "--loss l1" in result.output and "--task regression" in result.output


def test_predict_restores_the_targets_units_and_writes_the_gap(
    run_cli, brain_age: Path, tmp_path: Path
) -> None:
    from neurodl.data.images import preprocess
    from neurodl.tasks import classify

    out = tmp_path / "ages.csv"
    result = run_cli("classify", "predict", "--model", brain_age, brain_age / "test_manifest.tsv", "-o", out)
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["participant_id", "image", "age", "predicted_age", "age_gap"]
    np.testing.assert_allclose(predicted["age_gap"], predicted["predicted_age"] - predicted["age"])
    during_training = pd.read_csv(brain_age / "test_predictions.csv")
    np.testing.assert_allclose(predicted["predicted_age"], during_training["predicted_age"], rtol=1e-5)
    # The network predicts standardised age; predict reports years.
    loaded = classify.load(brain_age, device="cpu")
    x = preprocess(loaded.preprocessing, [Path(predicted["image"][0])])
    with torch.no_grad():
        raw = float(loaded.module.model(x.as_tensor()[None]))
    center, scale = loaded.target.center, loaded.target.scale
    assert 50 < center < 90 and scale > 1
    assert predicted["predicted_age"][0] == pytest.approx(raw * scale + center, rel=1e-5)

    single = run_cli("classify", "predict", "--model", brain_age, predicted["image"][0])
    assert single.exit_code == 0, single.output
    assert "predicted_age" in single.stdout and "age_gap" not in single.stdout


def test_evaluate_scores_the_column_refuses_training_participants_and_plots_by_group(
    run_cli, brain_age: Path, cohort: Path, tmp_path: Path
) -> None:
    report = tmp_path / "test"
    test_manifest = brain_age / "test_manifest.tsv"
    args = ("classify", "evaluate", "--model", brain_age)
    result = run_cli(*args, test_manifest, "--color-by", "diagnosis", "--out", report, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    trained = read_json(brain_age / "metrics.json")["test"]
    for key in ("mae", "rmse", "baseline_mae"):
        assert metrics[key] == pytest.approx(trained[key], rel=1e-5), key
    assert (report / "predicted_vs_true.png").is_file() and (report / "residuals_by_diagnosis.png").is_file()
    leaked = run_cli(*args, cohort)
    assert leaked.exit_code == 2 and "used to train" in leaked.output


def test_interpret_maps_the_predicted_value(run_cli, brain_age: Path, cohort: Path, tmp_path: Path) -> None:
    image = cohort.parent / "sub-001" / "anat" / "sub-001_T1w.nii.gz"
    for method in ("gradcam", "saliency"):
        result = run_cli(
            "classify", "interpret", "--model", brain_age, image, "--method", method, "-o", tmp_path, "--json"
        )
        assert result.exit_code == 0, result.output
        written = json.loads(result.stdout)[0]
        assert isinstance(written["predicted"], float)
        saved = nib.load(written["map"])
        np.testing.assert_allclose(saved.affine, nib.load(image).affine)
        assert np.isfinite(saved.get_fdata()).all() and saved.get_fdata().max() > 0


@pytest.mark.slow
def test_cross_validation_reports_mae_and_the_mean_baseline_with_their_spread(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    result = run_cli("classify", "train", cohort, "--label", "age", "--cv", "3", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = read_json(out / "metrics.json")
    for key in ("mae", "baseline_mae", "r2", "pearson_r"):
        assert np.isfinite(metrics["mean_std"][key]["std"]), key
    assert all(np.isfinite(fold["baseline_mae"]) for fold in metrics["folds"])
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert len(oof) == 10 and "age_gap" in oof.columns


@pytest.mark.slow
def test_two_seeded_regression_runs_are_identical(run_cli, cohort: Path, tmp_path: Path) -> None:
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        args = ("--label", "age", "--seed", "7", "--deterministic", "--device", "cpu")
        result = run_cli("classify", "train", cohort, *args, *TINY, "--out", out)
        assert result.exit_code == 0, result.output
    weights = [load_file(str(run / "model.safetensors")) for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert read_json(runs[0] / "metrics.json") == read_json(runs[1] / "metrics.json")
    assert read_json(runs[0] / "preprocessing.json") == read_json(runs[1] / "preprocessing.json")


@pytest.mark.slow
def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_ends(
    run_cli, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurodl.engine import loop

    args = (*TINY, "--epochs", "4", "--patience", "0", "--seed", "3", "--deterministic", "--device", "cpu")
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert run_cli("classify", "train", cohort, "--label", "age", *args, "--out", whole).exit_code == 0

    original, calls = loop.validate, {"n": 0}

    def ctrl_c_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(loop, "validate", ctrl_c_in_epoch_3)
    stopped = run_cli("classify", "train", cohort, "--label", "age", *args, "--out", interrupted)
    assert stopped.exit_code == 130
    monkeypatch.setattr(loop, "validate", original)
    resumed = run_cli("classify", "train", "--resume", "--out", interrupted, "--quiet")
    assert resumed.exit_code == 0, resumed.output

    assert list(pd.read_csv(interrupted / "history.csv")["epoch"]) == [1, 2, 3, 4]
    weights = [load_file(str(run / "model.safetensors")) for run in (whole, interrupted)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (
        read_json(whole / "preprocessing.json")["label"]
        == read_json(interrupted / "preprocessing.json")["label"]
    )


def test_regression_metrics_match_scikit_learn_and_scipy() -> None:
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from neurodl.tasks.metrics import regression_metrics

    rng = np.random.default_rng(0)
    truth = rng.normal(70, 6, 30)
    predicted = truth + rng.normal(0, 3, 30)
    metrics = regression_metrics(truth, predicted, training_mean=71.0)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert metrics["rmse"] == pytest.approx(mean_squared_error(truth, predicted) ** 0.5)
    assert metrics["r2"] == pytest.approx(r2_score(truth, predicted))
    assert metrics["pearson_r"] == pytest.approx(pearsonr(truth, predicted)[0])
    assert metrics["baseline_mae"] == pytest.approx(np.mean(np.abs(truth - 71.0)))
    constant = regression_metrics(np.full(4, 70.0), np.arange(4.0))
    assert np.isnan(constant["r2"]) and np.isnan(constant["pearson_r"]) and constant["mae"] > 0
