"""`neurodl sample-data`: files written, a summary for people and machines, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys


def test_writes_the_cohort_and_a_summary_table(run_cli, tmp_path):
    out = tmp_path / "cohort"

    result = run_cli("sample-data", out, "--n", "4", "--size", "20", "--seed", "0")

    assert result.exit_code == 0, result.output
    assert (out / "participants.tsv").is_file()
    assert (out / "dseg.tsv").is_file()
    for i in range(1, 5):
        for suffix in ("T1w", "T2w", "dseg"):
            assert (out / f"sub-00{i}" / "anat" / f"sub-00{i}_{suffix}.nii.gz").is_file()
    assert "CN" in result.stderr and "AD" in result.stderr
    assert "mean CSF" in result.stderr
    assert result.stdout == ""


def test_json_summary_on_stdout_and_quiet_stderr(run_cli, tmp_path):
    out = tmp_path / "cohort"

    result = run_cli("sample-data", out, "--n", "4", "--size", "16", "--json", "--quiet")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["n"] == 4
    assert summary["groups"]["CN"]["n"] == summary["groups"]["AD"]["n"] == 2
    assert len(summary["subjects"]) == 4
    assert summary["manifest"].endswith("participants.tsv")


def test_size_too_small_is_exit_2_with_the_fix(run_cli, tmp_path):
    result = run_cli("sample-data", tmp_path / "cohort", "--size", "8")

    assert result.exit_code == 2
    assert "--size 8" in result.stderr
    assert "Fix:" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "cohort").exists()


def test_non_empty_folder_needs_overwrite(run_cli, tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    refused = run_cli("sample-data", out, "--n", "2", "--size", "16")

    assert refused.exit_code == 2
    assert "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    replaced = run_cli("sample-data", out, "--n", "2", "--size", "16", "--overwrite", "-q")

    assert replaced.exit_code == 0, replaced.output
    assert (out / "participants.tsv").is_file()
    assert (out / "notes.txt").read_text() == "keep me"


def test_importing_the_command_does_not_load_numerical_libraries():
    code = (
        "import sys, neurodl.cli.sample_data; print(sorted({'numpy', 'scipy', 'nibabel'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
