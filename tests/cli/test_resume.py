"""``train --resume``: the interrupted command with --resume appended continues; real changes are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EPOCHS = 6


def make_table(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    level = np.arange(n) % 2
    pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "diagnosis": np.where(level == 1, "AD", "CN"),
            "csf_volume_ml": (150 + 60 * level + rng.normal(0, 25, n)).round(2),
            "brain_metabolism": (1.2 - 0.3 * level + rng.normal(0, 0.15, n)).round(4),
        }
    ).to_csv(path, index=False)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(table: Path | None, out: Path, *extra: str) -> list[str | Path]:
    return [
        "biomarkers",
        "train",
        *([table] if table is not None else []),
        "--target",
        "diagnosis",
        "--epochs",
        str(EPOCHS),
        "--patience",
        "0",
        "--out",
        out,
        "--quiet",
        *extra,
    ]


@pytest.fixture
def interrupted(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A run stopped by Ctrl-C during its 4th epoch (3 epochs checkpointed)."""
    from neurodl.engine import loop

    table = make_table(tmp_path / "cohort.csv")
    out = tmp_path / "run"
    original = loop.validate
    calls = {"n": 0}

    def interrupt_on_fourth_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(loop, "validate", interrupt_on_fourth_epoch)
    assert run_cli(*command(table, out)).exit_code == 130
    monkeypatch.setattr(loop, "validate", original)
    return table, out


def test_the_interrupted_command_with_resume_appended_finishes_the_run(run_cli, interrupted) -> None:
    table, out = interrupted
    resumed = run_cli(*command(table, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_raising_epochs_trains_a_finished_run_longer(run_cli, interrupted) -> None:
    table, out = interrupted
    assert run_cli(*command(table, out, "--resume")).exit_code == 0
    longer = run_cli(*command(table, out, "--resume", "--epochs", "9"))
    assert longer.exit_code == 0, longer.output
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == list(range(1, 10))
    assert json.loads((out / "config.json").read_text())["options"]["train"]["epochs"] == 9


def test_raising_epochs_of_an_interrupted_run(run_cli, interrupted) -> None:
    _, out = interrupted
    longer = run_cli("biomarkers", "train", "--resume", "--out", out, "--epochs", "8", "--quiet")
    assert longer.exit_code == 0, longer.output
    assert len(pd.read_csv(out / "history.csv")) == 8


def test_resume_of_a_finished_run_says_there_is_nothing_to_resume(run_cli, interrupted) -> None:
    table, out = interrupted
    assert run_cli(*command(table, out, "--resume")).exit_code == 0
    files = {p.name: digest(p) for p in out.iterdir() if p.is_file()}
    again = run_cli(*command(table, out, "--resume"))
    assert again.exit_code == 0, again.output
    assert "nothing to resume" in again.stderr and "--epochs" in again.stderr
    assert "Error" not in again.stderr
    assert {p.name: digest(p) for p in out.iterdir() if p.is_file()} == files


def test_a_real_change_is_refused_naming_old_and_new_value(run_cli, interrupted) -> None:
    table, out = interrupted
    changed = run_cli(*command(table, out, "--resume", "--lr", "0.5"))
    assert changed.exit_code == 2
    assert "--lr 0.5 (the run has 0.01)" in changed.stderr
    assert "--target" not in changed.stderr and "--epochs" not in changed.stderr.split("Fix")[0]
    fewer = run_cli(*command(table, out, "--resume", "--epochs", "2"))
    assert fewer.exit_code == 2 and "--epochs 2 (the run has 6)" in fewer.stderr


def test_a_manifest_other_than_the_runs_is_an_error_not_ignored(run_cli, interrupted, tmp_path) -> None:
    table, out = interrupted
    missing = run_cli(*command(tmp_path / "nonexistent.tsv", out, "--resume"))
    assert missing.exit_code == 2 and "nonexistent.tsv: file does not exist" in missing.stderr
    other = make_table(tmp_path / "other.csv")
    different = run_cli(*command(other, out, "--resume"))
    assert different.exit_code == 2 and "not " + str(other) in different.stderr
    as_value = run_cli("biomarkers", "train", "--resume", "true", "--out", out)
    assert as_value.exit_code == 2 and "--resume takes no value" in as_value.stderr
    assert not (out / "metrics.json").exists()


def test_translate_resume_names_source_and_target(run_cli, tmp_path) -> None:
    from neurodl.config import TranslateOptions, to_dict

    out = tmp_path / "run"
    out.mkdir()
    options = {"input": str(tmp_path / "m.tsv"), "input_sha256": "", **to_dict(TranslateOptions())}
    config = {"neurodl_format": 1, "task": "translate", "options": options}
    (out / "config.json").write_text(json.dumps(config))
    result = run_cli("translate", "train", "--resume", "--out", out, "--source", "t2", "--target", "flair")
    assert result.exit_code == 2
    assert "--source t2 (the run has t1)" in result.stderr
    assert "--target flair (the run has t2)" in result.stderr
    assert "--image" not in result.stderr
