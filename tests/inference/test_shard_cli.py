"""--shard is checked before anything is loaded, by every command that takes many inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

COMMANDS = [
    ("classify", "predict"),
    ("classify", "interpret"),
    ("segment", "predict"),
    ("autoencode", "encode"),
    ("autoencode", "reconstruct"),
    ("translate", "predict"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("shard", ["0/3", "4/3", "2", "x/3"])
def test_a_bad_shard_exits_2_naming_the_fix(run_cli, tmp_path: Path, command: tuple[str, str], shard: str):
    # The run directory does not exist: the shard is refused before the model is opened.
    result = run_cli(*command, "--model", tmp_path / "no-run", tmp_path / "a.nii.gz", "--shard", shard)
    assert result.exit_code == 2, result.output
    assert f"--shard '{shard}'" in result.stderr
    assert "I/N" in result.stderr or "between 1 and N" in result.stderr
    assert "Traceback" not in result.output


def test_negative_workers_exit_2(run_cli, tmp_path: Path):
    result = run_cli(
        "segment", "predict", "--model", tmp_path / "no-run", tmp_path / "a.nii.gz", "--workers", "-1"
    )
    assert result.exit_code == 2 and "--workers must be 0 or more" in result.stderr
