"""Every part of neurodl agrees on a run's monitor and on which way each metric improves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodl.config import lower_is_better
from neurodl.data.phantom import generate_cohort
from neurodl.engine.loop import monitor_mode
from neurodl.report.compare import Comparison, curves_metric
from neurodl.report.summary import summarize_run
from neurodl_testing import train

NAMES = {
    "val_loss": "min",
    "val_mae": "min",
    "val_rmse": "min",
    "val_hd95": "min",
    "val_hausdorff": "min",
    "val_dice": "max",
    "val_psnr": "max",
    "val_ssim": "max",
    "val_r2": "max",
    "val_balanced_accuracy": "max",
    "val_roc_auc": "max",
}


@pytest.mark.parametrize(("name", "mode"), NAMES.items())
def test_the_engine_and_the_reports_agree_on_the_direction_of_every_metric(name, mode):
    assert monitor_mode(name) == mode
    assert lower_is_better(name) is (mode == "min")


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("translate")
    generate_cohort(root / "cohort", n=6, size=16, seed=2)
    out = root / "run"
    train(
        "translate", "train", root / "cohort" / "participants.tsv", "--source", "t1", "--target", "t2",
        "--epochs", "2", "--width", "4", "--spacing", "1.5", "--batch-size", "16", "--quiet", "--out", out,
    )  # fmt: skip
    return out


def test_a_run_records_the_monitor_it_selected_on_and_compare_curves_plots_it(translate_run):
    assert json.loads((translate_run / "metrics.json").read_text())["monitor"] == "val_mae"
    summary = summarize_run(translate_run)
    assert summary.monitor == "val_mae"
    comparison = Comparison(runs=[summary], labels=["t1->t2"], options=[], metrics=[])
    assert curves_metric(comparison, None) == "val_mae"  # the second panel of `compare --curves`


def test_runs_written_before_the_monitor_was_recorded_still_name_the_tasks_default(translate_run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for file in translate_run.iterdir():
        if file.is_file():
            (old / file.name).write_bytes(file.read_bytes())
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["monitor"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    assert summarize_run(old).monitor == "val_mae"


def test_biomarkers_splits_name_the_participant_column_like_the_image_tasks(dx_runs):
    splits = json.loads((dx_runs[0] / "splits.json").read_text())
    assert splits["participant_column"] == "participant_id" and "group_column" not in splits
