"""Messages read as English: articles, plurals, and a column suggestion that fits the mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodl.cli._render import counted
from neurodl.errors import RunDirectoryError
from neurodl.io.rundir import RunDirectory

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "participants.tsv"


def test_a_run_of_another_task_takes_the_right_article(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"neurodl_format": 1, "task": "autoencode", "options": {}})
    )
    with pytest.raises(RunDirectoryError, match="is an 'autoencode' run, not a 'classify' run"):
        RunDirectory.open(tmp_path, task="classify")


def test_counts_agree_with_their_noun() -> None:
    assert [counted(n, "map") for n in (0, 1, 2)] == ["0 maps", "1 map", "2 maps"]


def test_a_mistyped_mask_column_suggests_the_nearest_name_not_other_options(run_cli, tmp_path: Path) -> None:
    result = run_cli("segment", "train", SAMPLE, "--mask", "seg", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "Did you mean 'dseg'" in result.stderr
    assert "--target" not in result.stderr and "--label" not in result.stderr


def test_a_label_in_the_wrong_case_suggests_the_column(run_cli, tmp_path: Path) -> None:
    result = run_cli("classify", "train", SAMPLE, "--label", "Diagnosis", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "Did you mean 'diagnosis' (not 'Diagnosis')" in result.stderr
