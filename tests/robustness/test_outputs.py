"""Outputs never overwrite inputs, and existing outputs are kept unless ``--overwrite``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurodl_testing.robustness import TRAIN_ARGS, digest, snapshot, stray_files

# The catalogue runs every case through every command: CI runs it all, `pytest -m 'not slow'` skips it.
pytestmark = pytest.mark.slow


def absolute_manifest(cohort: Path, path: Path) -> Path:
    """The cohort's manifest at ``path``, its image paths made absolute."""
    frame = pd.read_csv(cohort, sep="\t", dtype=str)
    for name in ("t1", "t2", "dseg"):
        frame[name] = [str((cohort.parent / v).resolve()) for v in frame[name]]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def copy_image(cohort: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz", path)
    return path


def refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


# -- an output that is an input ---------------------------------------------------------------

# Commands writing one table (-o FILE): the table given as the output is the input itself.
TABLE_OUTPUTS = {
    "biomarkers predict": ["biomarkers", "predict", "-o"],
    "classify predict": ["classify", "predict", "--quiet", "-o"],
    "autoencode encode": ["autoencode", "encode", "--quiet", "-o"],
    "segment predict --volumes": ["segment", "predict", "--quiet", "--volumes"],
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", list(TABLE_OUTPUTS))
def test_a_table_output_that_is_the_input_is_refused(
    command: str, overwrite: bool, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    manifest = absolute_manifest(cohort, tmp_path / "in" / "participants.tsv")
    task, action, *options = TABLE_OUTPUTS[command]
    extra = ["-o", tmp_path / "masks"] if task == "segment" else []
    before = snapshot(tmp_path / "in", cohort.parent)
    args = [task, action, "--model", runs[task], manifest, *extra, *options, manifest]
    result = run_cli(*args, *(["--overwrite"] if overwrite else []))
    refused(result, "is also an input")
    assert snapshot(tmp_path / "in", cohort.parent) == before
    assert not stray_files(tmp_path)


# Commands writing one image per input into -o DIR, and the suffix they add to its name.
IMAGE_OUTPUTS = {
    "segment predict": (["segment", "predict"], "_dseg"),
    "autoencode reconstruct": (["autoencode", "reconstruct"], "_recon"),
    "classify interpret": (["classify", "interpret", "--method", "saliency"], "_saliency"),
    "translate predict": (["translate", "predict"], "_to-t2"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", list(IMAGE_OUTPUTS))
def test_an_image_output_that_is_an_input_is_refused(
    command: str, overwrite: bool, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    """Inputs ``scan.nii.gz`` and ``scan_dseg.nii.gz``, output folder theirs: scan's mask would replace an input."""
    folder = tmp_path / "scans"
    scan = copy_image(cohort, folder / "scan.nii.gz")
    clash = copy_image(cohort, folder / f"scan{IMAGE_OUTPUTS[command][1]}.nii.gz")
    args, _ = IMAGE_OUTPUTS[command]
    before = snapshot(folder)
    result = run_cli(
        *args,
        "--model",
        runs[args[0]],
        scan,
        clash,
        "-o",
        folder,
        "--quiet",
        *(["--overwrite"] if overwrite else []),
    )
    refused(result, "is also an input", "1 of 2 inputs failed")
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not stray_files(folder)


# Evaluate commands: the report file that a manifest given in --out would be replaced by.
REPORTS = {
    "biomarkers": "predictions.csv",
    "classify": "predictions.csv",
    "segment": "per_image.csv",
    "autoencode": "per_image.csv",
    "translate": "per_image.csv",
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("task", list(REPORTS))
def test_an_evaluate_report_that_is_the_input_is_refused(
    task: str, overwrite: bool, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "report"
    manifest = absolute_manifest(cohort, report / REPORTS[task])
    before = snapshot(report)
    result = run_cli(
        task, "evaluate", "--model", runs[task], manifest, "--allow-overlap", "--out", report,
        *(["--overwrite"] if overwrite else []),
    )  # fmt: skip
    refused(result, "is also an input")
    assert snapshot(report) == before


def test_a_train_input_inside_the_run_directory_is_refused(
    run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    """Training on a run's own predictions with --out that run --overwrite would write over them."""
    run = tmp_path / "run"
    shutil.copytree(runs["biomarkers"], run)
    table = run / "validation_predictions.csv"
    frame = pd.read_csv(cohort, sep="\t")
    frame.to_csv(table, index=False)
    before = snapshot(run)
    result = run_cli("biomarkers", "train", table, *TRAIN_ARGS["biomarkers"], "--out", run, "--overwrite")
    refused(result, "inside")
    assert snapshot(run) == before


# -- existing outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [c for c in TABLE_OUTPUTS if "volumes" not in c])
def test_an_existing_table_is_kept_unless_overwrite(
    command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    manifest = absolute_manifest(cohort, tmp_path / "in" / "participants.tsv")
    image = cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    task, action, *options = TABLE_OUTPUTS[command]
    output = tmp_path / "out.csv"
    output.write_text("an earlier result\n")
    source = manifest if task == "biomarkers" else image
    kept = run_cli(task, action, "--model", runs[task], source, *options, output)
    refused(kept, str(output), "--overwrite")
    assert output.read_text() == "an earlier result\n"
    replaced = run_cli(task, action, "--model", runs[task], source, *options, output, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert len(pd.read_csv(output)) >= 1
    assert not stray_files(tmp_path)


@pytest.mark.parametrize("command", list(IMAGE_OUTPUTS))
def test_existing_images_are_kept_unless_overwrite(
    command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    args, suffix = IMAGE_OUTPUTS[command]
    image = copy_image(cohort, tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    first = run_cli(*args, "--model", runs[args[0]], image, "-o", out, "--quiet")
    assert first.exit_code == 0, first.output
    written = out / f"scan{suffix}.nii.gz"
    # A result a user edited by hand since: kept, byte for byte, unless --overwrite.
    source = nib.load(str(written))
    nib.save(nib.Nifti1Image(np.zeros(source.shape, source.get_data_dtype()), source.affine), str(written))
    edited = digest(written)
    again = run_cli(*args, "--model", runs[args[0]], image, "-o", out, "--quiet")
    assert again.exit_code == 0, again.output
    assert digest(written) == edited
    redone = run_cli(*args, "--model", runs[args[0]], image, "-o", out, "--quiet", "--overwrite")
    assert redone.exit_code == 0, redone.output
    assert digest(written) != edited
    assert not stray_files(tmp_path)


# Every command that walks a batch of images, and how it is told where to write.
BATCHES = {
    **{name: [*args, "-o", "out"] for name, (args, _) in IMAGE_OUTPUTS.items()},
    "classify predict": ["classify", "predict", "-o", "out/predictions.csv"],
    "autoencode encode": ["autoencode", "encode", "-o", "out/latents.csv"],
    "segment predict --volumes": ["segment", "predict", "-o", "out", "--volumes", "out/volumes.csv"],
}


@pytest.mark.parametrize("command", list(BATCHES))
def test_quiet_batches_say_only_what_they_wrote(
    command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    """--quiet: no progress bar or table, but the one line a batch's log keeps, in every batch command."""
    task, action, *options = BATCHES[command]
    image = copy_image(cohort, tmp_path / "scan.nii.gz")
    args = [task, action, "--model", runs[task], image, *[tmp_path / o if "out" in o else o for o in options]]
    quiet = run_cli(*args, "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert len(quiet.stderr.strip().splitlines()) == 1 and "written to" in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("task", list(REPORTS))
def test_an_existing_evaluation_is_kept_unless_overwrite(
    task: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    manifest = absolute_manifest(cohort, tmp_path / "participants.tsv")
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text('{"earlier": true}\n')
    args = [task, "evaluate", "--model", runs[task], manifest, "--allow-overlap", "--out", report]
    refused(run_cli(*args), "metrics.json", "--overwrite")
    assert (report / "metrics.json").read_text() == '{"earlier": true}\n'
    replaced = run_cli(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "earlier" not in (report / "metrics.json").read_text()


def test_an_existing_run_is_kept_unless_overwrite(
    run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
):
    run = tmp_path / "run"
    shutil.copytree(runs["biomarkers"], run)
    before = snapshot(run)
    result = run_cli("biomarkers", "train", cohort, *TRAIN_ARGS["biomarkers"], "--out", run)
    refused(result, "already holds a run", "--overwrite", "--resume")
    assert snapshot(run) == before
