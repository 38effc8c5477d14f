"""`neurodl biomarkers`: the lecture's models on tables, end to end through the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FAST = ["--epochs", "60", "--patience", "10", "--lr", "0.01", "--quiet"]


def make_table(
    path: Path, n: int = 80, seed: int = 0, separable: bool = False, classes: tuple[str, ...] = ("CN", "AD")
) -> Path:
    """A lecture-like cohort: CSF volume up and metabolism down with dementia."""
    rng = np.random.default_rng(seed)
    diagnosis = np.array([classes[i % len(classes)] for i in range(n)])
    level = np.array([classes.index(d) for d in diagnosis], dtype=float)
    spread = 0.2 if separable else 1.0
    csf = 150 + 60 * level + rng.normal(0, 25 * spread, n)
    metabolism = 1.2 - 0.3 * level + rng.normal(0, 0.15 * spread, n)
    severity = 2.0 * level + 0.04 * (csf - 150) + rng.normal(0, 0.3, n)
    frame = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "diagnosis": diagnosis,
            "severity": severity.round(3),
            "sex": rng.choice(["M", "F"], n),
            "csf_volume_ml": csf.round(2),
            "brain_metabolism": metabolism.round(4),
        }
    )
    frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_logistic_regression_separates_separable_data(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.tsv", separable=True)
    before = digest(table)
    run = tmp_path / "run"
    result = run_cli(
        "biomarkers",
        "train",
        table,
        "--target",
        "diagnosis",
        "--features",
        "csf_volume_ml,brain_metabolism",
        "--hidden",
        "none",
        "--out",
        run,
        "--json",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "logistic"
    assert summary["metrics"]["accuracy"] == 1.0
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "splits.json",
        "history.csv",
        "metrics.json",
        "learning_curves.png",
        "validation_roc.png",
        "coefficients.csv",
    ):
        assert (run / name).is_file(), name
    coefficients = pd.read_csv(run / "coefficients.csv").set_index("feature")
    # Dementia (the positive class) has more fluid and lower metabolism.
    assert coefficients.loc["csf_volume_ml", "weight"] > 0
    assert coefficients.loc["brain_metabolism", "weight"] < 0
    assert digest(table) == before


@pytest.mark.slow
def test_linear_regression_by_gradient_descent_recovers_the_line(run_cli, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, 60)
    pd.DataFrame({"x": x, "y": 3.0 * x - 2.0}).to_csv(tmp_path / "line.csv", index=False)
    run = tmp_path / "run"
    result = run_cli(
        "biomarkers",
        "train",
        tmp_path / "line.csv",
        "--target",
        "y",
        "--hidden",
        "none",
        "--batch-size",
        "all",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--epochs",
        "300",
        "--patience",
        "0",
        "--out",
        run,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    coefficients = pd.read_csv(run / "coefficients.csv").set_index("feature")
    assert coefficients.loc["x", "weight"] == pytest.approx(3.0, abs=1e-3)
    assert coefficients.loc["(intercept)", "weight"] == pytest.approx(-2.0, abs=1e-2)
    assert json.loads((run / "preprocessing.json").read_text())["model"]["name"] == "linear"


@pytest.mark.slow
def test_mlp_regression_of_severity_with_cv(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv")
    run = tmp_path / "run"
    result = run_cli(
        "biomarkers",
        "train",
        table,
        "--target",
        "severity",
        "--features",
        "csf_volume_ml,brain_metabolism",
        "--cv",
        "3",
        "--hidden",
        "16",
        "--activation",
        "tanh",
        "--out",
        run,
        "--json",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "regression"
    assert summary["metrics"]["r2"] > 0.6
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3 and "std" in metrics["mean_std"]["mae"]
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 80 and {"participant_id", "severity", "predicted_severity"} <= set(oof.columns)
    assert (run / "oof_predicted_vs_true.png").is_file()
    history = pd.read_csv(run / "history.csv")
    assert set(history["fold"]) == {1, 2, 3}


def test_predict_probabilities_sum_to_one_multiclass(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=90, classes=("CN", "MCI", "AD"), separable=True)
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--target",
            "diagnosis",
            "--features",
            "csf_volume_ml,brain_metabolism,sex",
            "--out",
            run,
            *FAST,
        ).exit_code
        == 0
    )
    new = make_table(tmp_path / "new.csv", n=12, seed=5, classes=("CN", "MCI", "AD"))
    result = run_cli("biomarkers", "predict", "--model", run, new, "-o", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(tmp_path / "preds.csv")
    probabilities = preds[["probability_CN", "probability_MCI", "probability_AD"]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert list(preds["participant_id"]) == [f"sub-{i:03d}" for i in range(12)]
    assert set(preds["predicted_diagnosis"]) <= {"CN", "MCI", "AD"}
    prep = json.loads((run / "preprocessing.json").read_text())
    assert "sex=F" in FeatureNames(prep)


def FeatureNames(prep: dict) -> list[str]:  # noqa: N802
    features = prep["features"]
    return features["numeric"] + [
        f"{c}={lv}" for c in features["categorical"] for lv in features["levels"][c]
    ]


def test_standardisation_is_fitted_on_training_rows_only(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    frame = pd.read_csv(table)
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--target",
            "diagnosis",
            "--features",
            "csf_volume_ml",
            "--out",
            run,
            "--epochs",
            "2",
            "--quiet",
        ).exit_code
        == 0
    )
    splits = json.loads((run / "splits.json").read_text())
    prep = json.loads((run / "preprocessing.json").read_text())
    train = frame[frame.participant_id.isin(splits["train"])]
    assert not set(splits["train"]) & set(splits["validation"])
    assert prep["features"]["centers"][0] == pytest.approx(train.csf_volume_ml.mean())
    assert prep["features"]["centers"][0] != pytest.approx(frame.csf_volume_ml.mean())


def test_sessions_of_one_participant_stay_on_one_side(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=60)
    frame = pd.read_csv(table)
    frame["participant_id"] = [f"sub-{i // 3:03d}" for i in range(60)]  # three sessions each
    frame["diagnosis"] = ["CN" if (i // 3) % 2 == 0 else "AD" for i in range(60)]
    frame.to_csv(table, index=False)
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--target",
            "diagnosis",
            "--cv",
            "4",
            "--out",
            run,
            "--epochs",
            "2",
            "--quiet",
        ).exit_code
        == 0
    )
    folds = json.loads((run / "splits.json").read_text())["folds"]
    tested = [p for fold in folds for p in fold["test"]]
    assert len(tested) == len(set(tested)) == 20


def test_evaluate_refuses_training_participants_and_scores_held_out_ones(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", separable=True)
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--target",
            "diagnosis",
            "--features",
            "csf_volume_ml,brain_metabolism",
            "--out",
            run,
            *FAST,
        ).exit_code
        == 0
    )
    refused = run_cli("biomarkers", "evaluate", "--model", run, table)
    assert refused.exit_code == 2
    assert "used to train" in refused.stderr and "--allow-overlap" in refused.stderr
    held_out = make_table(tmp_path / "held_out.csv", n=20, seed=9, separable=True)
    frame = pd.read_csv(held_out)
    frame["participant_id"] = [f"new-{i}" for i in range(20)]
    frame.to_csv(held_out, index=False)
    result = run_cli("biomarkers", "evaluate", "--model", run, held_out, "--out", tmp_path / "eval", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["balanced_accuracy"] > 0.9
    assert (tmp_path / "eval" / "roc.png").is_file() and (
        tmp_path / "eval" / "confusion_matrix.png"
    ).is_file()


def test_config_file_sets_options_and_flags_override_it(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    (tmp_path / "options.yaml").write_text(
        "target: diagnosis\nhidden: none\nepochs: 3\nlr: 0.05\noptimizer: rmsprop\n"
    )
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--config",
            tmp_path / "options.yaml",
            "--epochs",
            "2",
            "--out",
            run,
            "--quiet",
        ).exit_code
        == 0
    )
    saved = json.loads((run / "config.json").read_text())["options"]
    assert saved["hidden"] == [] and saved["train"]["optimizer"] == "rmsprop" and saved["train"]["lr"] == 0.05
    assert saved["train"]["epochs"] == 2
    assert len(pd.read_csv(run / "history.csv")) == 2


@pytest.mark.parametrize(
    ("edit", "args", "expected"),
    [
        (None, ["--target", "mmse"], "no column 'mmse'. Available columns: participant_id, diagnosis"),
        ("text_feature", ["--features", "notes"], "column 'notes' is not numeric"),
        ("nan", ["--features", "csf_volume_ml"], "missing values in rows 4, 8"),
        ("one_class", [], "single class 'CN'"),
        (
            None,
            ["--cv", "60"],
            "40 participants are too few to train and validate (at least 120 needed for --cv 60)",
        ),
        (None, ["--hidden", "64,x"], "--hidden '64,x'"),
        (None, ["--optimizer", "lbfgs"], "--optimizer 'lbfgs' is not one of"),
    ],
)
def test_bad_training_input_exits_2_with_a_message(run_cli, tmp_path, edit, args, expected):
    table = make_table(tmp_path / "cohort.csv", n=40)
    frame = pd.read_csv(table)
    if edit == "text_feature":
        frame["notes"] = [f"visit note {i}" for i in range(40)]
    elif edit == "nan":
        frame.loc[[3, 7], "csf_volume_ml"] = np.nan
    elif edit == "one_class":
        frame["diagnosis"] = "CN"
    frame.to_csv(table, index=False)
    before = digest(table)
    result = run_cli(
        "biomarkers", "train", table, "--out", tmp_path / "run", "--epochs", "2", "--quiet", *args
    )
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert digest(table) == before


def test_missing_values_can_be_imputed_from_training_rows(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    frame = pd.read_csv(table)
    frame.loc[[3, 7], "csf_volume_ml"] = np.nan
    frame.to_csv(table, index=False)
    result = run_cli(
        "biomarkers",
        "train",
        table,
        "--features",
        "csf_volume_ml",
        "--impute",
        "median",
        "--out",
        tmp_path / "run",
        "--epochs",
        "2",
        "--quiet",
    )
    assert result.exit_code == 0, result.output


def test_predict_names_the_missing_feature_and_refuses_other_tasks(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    run = tmp_path / "run"
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--features",
            "csf_volume_ml,brain_metabolism",
            "--out",
            run,
            "--epochs",
            "2",
            "--quiet",
        ).exit_code
        == 0
    )
    pd.read_csv(table).drop(columns=["brain_metabolism"]).to_csv(tmp_path / "partial.csv", index=False)
    result = run_cli("biomarkers", "predict", "--model", run, tmp_path / "partial.csv")
    assert result.exit_code == 2
    assert "no feature column 'brain_metabolism'" in result.stderr

    other = tmp_path / "segment_run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"neurodl_format": 1, "task": "segment", "options": {}}))
    result = run_cli("biomarkers", "predict", "--model", other, table)
    assert result.exit_code == 2
    assert "is a 'segment' run, not a 'biomarkers' run" in result.stderr


def test_predict_never_overwrites_its_input(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    run = tmp_path / "run"
    assert run_cli("biomarkers", "train", table, "--out", run, "--epochs", "2", "--quiet").exit_code == 0
    before = digest(table)
    result = run_cli("biomarkers", "predict", "--model", run, table, "-o", table)
    assert result.exit_code == 2 and "never overwrites its inputs" in result.stderr
    assert digest(table) == before


def test_existing_run_is_not_overwritten_without_flag(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    run = tmp_path / "run"
    assert run_cli("biomarkers", "train", table, "--out", run, "--epochs", "2", "--quiet").exit_code == 0
    result = run_cli("biomarkers", "train", table, "--out", run, "--epochs", "2", "--quiet")
    assert result.exit_code == 2 and "--resume" in result.stderr
    assert (
        run_cli(
            "biomarkers", "train", table, "--out", run, "--epochs", "2", "--quiet", "--overwrite"
        ).exit_code
        == 0
    )


def test_resume_finishes_an_interrupted_run_with_identical_weights(run_cli, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from neurodl.engine import loop

    table = make_table(tmp_path / "cohort.csv", n=40)
    args = [
        "biomarkers",
        "train",
        table,
        "--target",
        "diagnosis",
        "--dropout",
        "0.2",
        "--epochs",
        "6",
        "--patience",
        "0",
        "--quiet",
    ]
    assert run_cli(*args, "--out", tmp_path / "reference").exit_code == 0

    original = loop.validate
    calls = {"n": 0}

    def interrupt_on_fourth_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(loop, "validate", interrupt_on_fourth_epoch)
    interrupted = run_cli(*args, "--out", tmp_path / "run")
    assert interrupted.exit_code == 130
    assert "--resume" in interrupted.stderr
    monkeypatch.setattr(loop, "validate", original)
    resumed = run_cli("biomarkers", "train", "--resume", "--out", tmp_path / "run", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    reference = load_file(str(tmp_path / "reference" / "model.safetensors"))
    result = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(np.array_equal(reference[k].numpy(), result[k].numpy()) for k in reference)
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 6


def test_fast_epoch_metrics_equal_scikit_learn():
    from neurodl.tasks.metrics import classification_metrics, epoch_classification_metrics

    rng = np.random.default_rng(0)
    for k in (2, 3):
        for _ in range(20):
            y = rng.integers(0, k, 30)
            proba = rng.random((30, k)).round(1) + 0.01  # rounded: ties, as in real scores
            proba /= proba.sum(axis=1, keepdims=True)
            reference = classification_metrics(y, proba, [str(c) for c in range(k)])
            for key, value in epoch_classification_metrics(y, proba).items():
                assert value == pytest.approx(reference[key], abs=1e-12, nan_ok=True), key


def test_a_feature_derived_from_the_target_is_flagged(run_cli, tmp_path):
    table = make_table(tmp_path / "cohort.csv", n=40)
    frame = pd.read_csv(table)
    frame["leak"] = (frame["diagnosis"] == "AD").astype(int) * 3 + 1  # a score recorded only for patients
    frame.to_csv(table, index=False)
    result = run_cli(
        "biomarkers",
        "train",
        table,
        "--target",
        "diagnosis",
        "--epochs",
        "2",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any("'leak' alone separates the classes" in w for w in warnings)
    assert not any("'brain_metabolism'" in w for w in warnings)
    assert "Warning: feature 'leak'" in result.stderr
