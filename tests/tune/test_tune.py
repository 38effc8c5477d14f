"""`neurodl tune`: an Optuna study of normal runs, shared by processes through one storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

optuna = pytest.importorskip("optuna")

SPACE = {
    "lr": {"low": 0.003, "high": 0.3, "log": True},
    "optimizer": ["sgd", "adam"],
    "hidden": ["none", "8"],
    "momentum": 0.9,
}
TASK_OPTIONS = ["--features", "csf_volume_ml,brain_metabolism", "--epochs", "8", "--patience", "0"]


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


@pytest.fixture
def search(tmp_path):
    table = make_table(tmp_path / "cohort.tsv")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return table, space


def load(storage: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")


@pytest.mark.slow
def test_two_processes_share_one_study_and_a_rerun_continues_it(tmp_path, search):
    table, space = search
    storage = tmp_path / "shared.db"
    out = tmp_path / "tune"

    def command(trials: int) -> list[str]:
        return [
            sys.executable, "-m", "neurodl", "tune", "biomarkers", str(table), *TASK_OPTIONS,
            "--trials", str(trials), "--space", str(space), "--storage", str(storage),
            "--study", "dx", "--out", str(out), "--quiet",
        ]  # fmt: skip

    workers = [subprocess.Popen(command(6), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err
    study = load(storage, "dx")
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # Each process stops once the study holds 6 finished trials (one more may start in the race).
    assert 6 <= len(done) <= 7
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.user_attrs["worker"] for t in done}) == 2, "both processes ran trials"
    runs = [t.user_attrs["run"] for t in done]
    assert len(runs) == len(set(runs)) and all((out / r / "config.json").exists() for r in runs)

    rerun = subprocess.run(command(len(done) + 2), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    study = load(storage, "dx")
    again = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(again) == len(done) + 2
    assert {t.number for t in done} < {t.number for t in again}


@pytest.mark.slow
def test_best_params_reproduce_the_best_trial_with_config_and_the_same_seed(run_cli, tmp_path, search):
    table, space = search
    out = tmp_path / "tune"
    result = run_cli(
        "tune", "biomarkers", table, *TASK_OPTIONS, "--seed", "3", "--trials", "3", "--space", space,
        "--out", out, "--pruner", "none", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tune.json").read_text())
    assert summary["kind"] == "neurodl-tune" and summary["monitor"] == "val_loss"
    assert summary["trials"] == {"complete": 3}
    best = summary["best"]
    assert (out / "best").resolve() == (out / best["run"]).resolve()
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial"])[0] == best["trial"] and trials["val_loss"].is_monotonic_increasing
    assert (out / "optimization_history.png").exists()
    params = yaml.safe_load((out / "best_params.yaml").read_text())
    assert params["seed"] == 3 and params["epochs"] == 8 and params["momentum"] == 0.9

    # compare and report read a tune directory: its trials side by side, the best first.
    result = run_cli("compare", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    compared = json.loads(result.stdout)["runs"]
    assert [Path(r["run"]).name for r in compared] == [Path(r).name for r in trials["run"]]
    assert Path(compared[0]["run"]).name == Path(best["run"]).name
    result = run_cli("report", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    page = (out / "report.html").read_text()
    assert "Trials, best first" in page and f"trial {best['trial']}" in page

    again = tmp_path / "again"
    result = run_cli(
        "biomarkers", "train", table, "--config", out / "best_params.yaml", "--out", again, "--quiet"
    )
    assert result.exit_code == 0, result.stderr
    history = pd.read_csv(again / "history.csv")
    assert history["val_loss"].min() == pytest.approx(best["value"], rel=1e-6)


def test_a_space_file_naming_an_unknown_option_is_refused(run_cli, tmp_path, search):
    table, _ = search
    space = tmp_path / "bad.yaml"
    space.write_text("learning_rate: {low: 0.001, high: 0.1}\n")
    result = run_cli("tune", "biomarkers", table, "--trials", "1", "--space", space, "--out", tmp_path / "t")
    assert result.exit_code == 2
    assert "learning_rate" in result.stderr and "is not an option of biomarkers train" in result.stderr


def test_unknown_task_option_is_refused_before_any_trial(run_cli, tmp_path, search):
    table, space = search
    result = run_cli(
        "tune",
        "biomarkers",
        table,
        "--colour",
        "red",
        "--trials",
        "1",
        "--space",
        space,
        "--out",
        tmp_path / "t",
    )
    assert result.exit_code == 2
    assert "colour" in result.stderr
    assert not (tmp_path / "t" / "trials").exists()


def test_a_trial_worse_than_the_median_at_an_epoch_is_pruned():
    """The pruning callback reports each epoch's monitor to a real Optuna study (the first fit only)."""
    from neurodl.tune.study import _TrialObserver

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for value in (0.2, 0.3):
        trial = study.ask()
        [callback] = _TrialObserver(trial, "val_loss").fit_callbacks("training")
        for epoch in (1, 2, 3):
            callback.on_epoch_end({"epoch": epoch, "val_loss": value})
        study.tell(trial, value)
    [good] = _TrialObserver(study.ask(), "val_loss").fit_callbacks("training")
    for epoch in (1, 2, 3):
        good.on_epoch_end({"epoch": epoch, "val_loss": 0.21})  # better than the median: goes on
    observer = _TrialObserver(study.ask(), "val_loss")
    [first] = observer.fit_callbacks("fold 1/3")
    with pytest.raises(optuna.TrialPruned):
        first.on_epoch_end({"epoch": 1, "val_loss": 0.9})
    [second] = observer.fit_callbacks("fold 2/3")
    second.on_epoch_end({"epoch": 1, "val_loss": 0.9})  # later folds are not pruned on
    assert observer.fit_callbacks("final model (all rows)") == []


def test_space_entries_are_checked():
    from neurodl.errors import UsageError
    from neurodl.tune.space import SearchSpace

    space = SearchSpace.parse(
        {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "width": {"low": 8, "high": 32}}
    )
    assert [(d.name, d.integer, d.log) for d in space.dimensions] == [
        ("lr", False, True),
        ("width", True, False),
    ]
    with pytest.raises(UsageError, match="above 0 on a log scale"):
        SearchSpace.parse({"lr": {"low": 0, "high": 1, "log": True}}, "space.yaml")
    with pytest.raises(UsageError, match="space.yaml: 'dropout'"):
        SearchSpace.parse({"dropout": {"min": 0, "max": 0.5}}, "space.yaml")


@pytest.mark.slow
def test_workers_starting_together_on_a_new_storage_all_open_it(tmp_path):
    """A job array's tasks start at once: all but one lose the race to create the storage's tables."""
    code = (
        "import sys\nfrom neurodl.tune.study import open_study\nopen_study(sys.argv[1], 'dx', 'minimize')\n"
    )
    url = f"sqlite:///{tmp_path / 'new.db'}"
    workers = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["dx"]
