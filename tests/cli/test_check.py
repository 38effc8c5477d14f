"""`neurodl check`: every problem of a dataset in one pass, exit 2 if any."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from neurodl.data.validation import check_manifest
from neurodl.io.manifest import load_manifest
from neurodl_testing import las_anisotropic_affine, make_nifti

SHAPE = (8, 8, 8)


def _cohort(
    root: Path,
    labels: list[str] | None = None,
    participants: list[str] | None = None,
    channels: tuple[str, ...] = ("T1w", "T2w"),
    name: str = "participants.csv",
) -> Path:
    """One row per subject: relative paths to tiny LAS volumes, a diagnosis column."""
    labels = labels or ["AD", "CN", "AD", "CN"]
    participants = participants or [f"sub-{i:02d}" for i in range(1, len(labels) + 1)]
    columns = [c.lower().removesuffix("w") for c in channels]
    lines = [",".join(["participant_id", *columns, "diagnosis", "age"])]
    for row, (sub, label) in enumerate(zip(participants, labels, strict=True)):
        files = []
        for channel in channels:
            rel = f"{sub}/anat/{sub}_run-{row}_{channel}.nii.gz"
            make_nifti(root / rel, shape=SHAPE, affine=las_anisotropic_affine(), seed=row * 7 + len(files))
            files.append(rel)
        lines.append(",".join([sub, *files, label, str(60 + row)]))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _image(root: Path, row: int, channel: str = "T1w") -> Path:
    return next(root.glob(f"sub-*/anat/*_run-{row}_{channel}.nii.gz"))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_good_manifest_passes_with_a_summary(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    before = _tree_digest(tmp_path)

    result = run_cli("check", manifest, "--image", "t1", "--image", "t2", "--label", "diagnosis")

    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "Rows" in err and "4" in err
    assert "8x8x8 (8)" in err
    assert "LAS (8)" in err
    assert "1x1.5x3 (8)" in err
    assert "AD (2), CN (2)" in err
    assert "OK:" in err
    assert "Problem" not in err
    assert _tree_digest(tmp_path) == before


def test_image_columns_are_detected_and_named(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    result = run_cli("check", manifest)
    assert result.exit_code == 0, result.output
    assert "Image columns: t1, t2 (every column of NIfTI paths" in result.stderr


def test_json_report(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    result = run_cli("check", manifest, "--label", "diagnosis", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["rows"] == 4 and report["participants"] == 4
    assert report["image_columns"] == ["t1", "t2"]
    assert report["label_counts"] == {"AD": 2, "CN": 2}
    assert report["shapes"] == {"8x8x8": 8}
    assert report["problems"] == []
    assert result.stderr == ""


def test_missing_column_lists_the_available_ones(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    result = run_cli("check", manifest, "--image", "flair", "--label", "dx")
    assert result.exit_code == 2
    assert "'flair'" in result.stderr and "'dx'" in result.stderr
    assert "Available columns: participant_id, t1, t2, diagnosis, age" in result.stderr


def test_all_problems_are_reported_in_one_pass(run_cli, tmp_path):
    manifest = _cohort(tmp_path, labels=["AD", "CN", "AD", "CN", "AD", "CN", "AD"])
    # row 1: a missing file
    _image(tmp_path, 0, "T2w").unlink()
    # row 2: a 4D T1w
    make_nifti(_image(tmp_path, 1), shape=(*SHAPE, 3), affine=las_anisotropic_affine())
    # row 3: channels of different shapes
    make_nifti(_image(tmp_path, 2, "T2w"), shape=(8, 8, 6), affine=las_anisotropic_affine())
    # row 4: same shape, another grid
    make_nifti(_image(tmp_path, 3, "T2w"), shape=SHAPE, affine=np.eye(4))
    # row 5: NaN voxels
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    data[1, 1, 1] = np.nan
    make_nifti(_image(tmp_path, 4), data, affine=las_anisotropic_affine())
    # row 6: a blank image
    make_nifti(_image(tmp_path, 5), np.zeros(SHAPE, np.float32), affine=las_anisotropic_affine())
    # row 7: not NIfTI at all
    _image(tmp_path, 6).write_text("oops")
    before = _tree_digest(tmp_path)

    result = run_cli("check", manifest, "--label", "diagnosis", "--json")

    assert result.exit_code == 2
    err = result.stderr
    assert "row 1, column 't2'" in err and "file does not exist" in err
    assert "row 2, column 't1'" in err and "axis 4 has 3 volumes" in err
    assert "row 3: channels have different shapes: t1 8x8x8, t2 8x8x6" in err
    assert "row 4: channels share a shape but not a grid" in err
    assert "row 5, column 't1'" in err and "1 NaN" in err
    assert "row 6, column 't1'" in err and "constant" in err
    assert "row 7, column 't1'" in err and "cannot be read as NIfTI" in err
    assert "7 problems found in 7 rows" in err
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [p["row"] for p in report["problems"]] == [1, 2, 3, 4, 5, 6, 7]
    assert all(p["fix"] for p in report["problems"])
    assert _tree_digest(tmp_path) == before


def test_a_single_class_is_a_problem(run_cli, tmp_path):
    manifest = _cohort(tmp_path, labels=["CN", "CN", "CN"])
    result = run_cli("check", manifest, "--label", "diagnosis")
    assert result.exit_code == 2
    assert "single class ('CN', 3 rows)" in result.stderr


def test_a_rare_class_is_a_warning(run_cli, tmp_path):
    manifest = _cohort(tmp_path, labels=["AD", "CN", "AD", "CN", "MCI"])
    result = run_cli("check", manifest, "--label", "diagnosis")
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.stderr and "class 'MCI' has 1 row" in result.stderr


def test_continuous_label_gets_a_range(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    result = run_cli("check", manifest, "--label", "age", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["label_kind"] == "continuous"
    assert report["label_range"]["min"] == 60 and report["label_range"]["max"] == 63


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["0", "1", "2", "1"], "classes"),
        (["1", "2", "1", "2"], "classes"),
        (["-1", "1", "-1", "1"], "classes"),
        (["0", "3", "7", "12"], "continuous"),  # a score with gaps
        (["0.5", "1", "2", "1"], "continuous"),
        (["70", "71", "72", "73"], "continuous"),  # an age
        (["yes", "no", "no", "yes"], "classes"),
    ],
)
def test_label_kind(tmp_path, values, kind):
    manifest_path = _cohort(tmp_path, labels=values)
    manifest = load_manifest(manifest_path, ["t1"], "diagnosis", require_files=False)
    assert check_manifest(manifest).label_kind == kind


def test_participants_with_several_rows_are_a_note(run_cli, tmp_path):
    manifest = _cohort(
        tmp_path, labels=["AD", "AD", "CN", "CN"], participants=["sub-01", "sub-01", "sub-02", "sub-03"]
    )
    result = run_cli("check", manifest, "--label", "diagnosis")
    assert result.exit_code == 0, result.output
    assert "Note:" in result.stderr
    assert "sub-01 (2 rows)" in result.stderr and "splits keep" in result.stderr


def test_same_file_under_two_participants_warns_of_leakage(run_cli, tmp_path):
    manifest = _cohort(tmp_path, channels=("T1w",))
    text = manifest.read_text()
    first = _image(tmp_path, 0).relative_to(tmp_path).as_posix()
    second = _image(tmp_path, 1).relative_to(tmp_path).as_posix()
    manifest.write_text(text.replace(second, first))
    result = run_cli("check", manifest)
    assert result.exit_code == 0, result.output
    assert "the same file is in rows 1, 2" in result.stderr and "leakage" in result.stderr


def test_copies_under_other_names_warn_of_leakage(run_cli, tmp_path):
    manifest = _cohort(tmp_path, channels=("T1w",))
    _image(tmp_path, 2).write_bytes(_image(tmp_path, 0).read_bytes())
    result = run_cli("check", manifest)
    assert result.exit_code == 0, result.output
    assert "identical voxels" in result.stderr and "rows 1, 3" in result.stderr


def test_mask_label_column(run_cli, tmp_path):
    rows = ["t1,seg"]
    for i in range(2):
        t1 = make_nifti(tmp_path / f"sub-0{i}_T1w.nii.gz", shape=SHAPE, seed=i)
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:5, 2:5, 2:5] = i + 1
        make_nifti(tmp_path / f"sub-0{i}_dseg.nii.gz", mask)
        rows.append(f"{t1.name},sub-0{i}_dseg.nii.gz")
    make_nifti(tmp_path / "sub-09_dseg.nii.gz", np.full(SHAPE, 0.5, np.float32))
    rows.append("sub-00_T1w.nii.gz,sub-09_dseg.nii.gz")
    manifest = tmp_path / "seg.csv"
    manifest.write_text("\n".join(rows) + "\n")

    result = run_cli("check", manifest, "--label", "seg", "--json")

    report = json.loads(result.stdout)
    assert report["label_kind"] == "mask"
    assert report["mask_values"] == [0.0, 1.0, 2.0]
    assert report["participant_source"] == "filename"
    assert [p["row"] for p in report["problems"]] == [3]
    assert "non-integer" in report["problems"][0]["message"]
    assert result.exit_code == 2


def test_quiet_keeps_problems(run_cli, tmp_path):
    manifest = _cohort(tmp_path)
    _image(tmp_path, 1).unlink()
    result = run_cli("check", manifest, "-q")
    assert result.exit_code == 2
    assert "Problem: row 2, column 't1'" in result.stderr
    assert "Rows" not in result.stderr


def test_library_reports_progress(tmp_path):
    manifest = load_manifest(_cohort(tmp_path), None, "diagnosis", require_files=False)
    calls = []
    report = check_manifest(manifest, progress=lambda done, total: calls.append((done, total)))
    assert report.ok
    assert calls[0] == (0, 8) and calls[-1] == (8, 8)
