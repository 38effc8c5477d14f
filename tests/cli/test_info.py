"""`neurodl info`: one row per file; bad files named with a fix, the others still reported."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurodl_testing import las_anisotropic_affine, make_nifti


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def test_reports_shape_spacing_orientation_dtype(run_cli, tmp_path):
    data = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    path = make_nifti(tmp_path / "sub-01_T1w.nii.gz", data, affine=las_anisotropic_affine())
    before = _digest([path])

    result = run_cli("info", path)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stderr.splitlines() if "sub-01_T1w" in line)
    for expected in ("8x9x10", "1x1.5x3", "LAS", "int16", "719", "359.5"):
        assert expected in row
    assert result.stdout == ""
    assert _digest([path]) == before


def test_json_lists_one_dict_per_file(run_cli, tmp_path):
    data = np.ones((6, 6, 6), np.float32)
    data[0, 0, 0] = np.nan
    a = make_nifti(tmp_path / "a.nii.gz", data)
    b = make_nifti(tmp_path / "b.nii", shape=(6, 7, 8, 3), dtype=np.float32)

    result = run_cli("info", a, b, "--json")

    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == [str(a), str(b)]
    assert records[0]["nan"] == 1 and records[0]["min"] == 1.0
    assert records[1]["shape"] == [6, 7, 8, 3]  # 4D is fine for info
    assert records[0]["orientation"] == "RAS"
    assert np.array(records[0]["affine"]).shape == (4, 4)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = make_nifti(tmp_path / "src.nii.gz")
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.nii"
    empty.touch()
    text = tmp_path / "notes.nii"
    text.write_text("this is not an image\n" * 40)
    cifti = nib.Nifti2Image(np.zeros((1, 1, 1, 1, 1, 10), np.float32), np.eye(4))
    cifti.header.set_intent(3006)
    nib.save(cifti, str(tmp_path / "x.dscalar.nii"))
    gz_text = tmp_path / "t.nii.gz"
    gz_text.write_bytes(gzip.compress(b"hello" * 100))
    return {
        "missing": tmp_path / "nope.nii.gz",
        "empty": empty,
        "truncated": truncated,
        "text": text,
        "cifti": tmp_path / "x.dscalar.nii",
        "gz_text": gz_text,
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("truncated", "truncated|corrupt"),
        ("text", "cannot be read as NIfTI"),
        ("cifti", "CIFTI"),
        ("gz_text", "cannot be read as NIfTI"),
    ],
)
def test_bad_file_is_named_with_a_fix_and_others_still_reported(run_cli, tmp_path, case, message):
    good = make_nifti(tmp_path / "good.nii.gz", shape=(5, 6, 7))
    bad = _bad_files(tmp_path)[case]

    result = run_cli("info", good, bad, "--json")

    assert result.exit_code == 2
    assert "5x6x7" in result.stderr  # the good file's row
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert str(bad) in error
    assert any(line.startswith("Fix:") for line in result.stderr.splitlines())
    assert re.search(message, result.stderr)
    assert "Traceback" not in result.output
    records = json.loads(result.stdout)
    assert records[0]["file"] == str(good)
    assert records[1]["file"] == str(bad) and records[1]["error"]


def test_every_bad_file_gets_its_own_message(run_cli, tmp_path):
    bad = _bad_files(tmp_path)
    result = run_cli("info", *bad.values())
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == len(bad)
    for path in bad.values():
        assert any(str(path) in line for line in errors)


def test_folder_is_searched_recursively(run_cli, tmp_path):
    make_nifti(tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", shape=(4, 4, 4))
    make_nifti(tmp_path / "ds" / "sub-02" / "anat" / "sub-02_T1w.nii", shape=(4, 4, 5))
    (tmp_path / "ds" / "README").write_text("not an image")

    result = run_cli("info", tmp_path / "ds", "--json")

    assert result.exit_code == 0, result.output
    files = [Path(r["file"]).name for r in json.loads(result.stdout)]
    assert files == ["sub-01_T1w.nii.gz", "sub-02_T1w.nii"]


def test_folder_without_images_is_an_error(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("info", tmp_path / "empty")
    assert result.exit_code == 2
    assert "no .nii or .nii.gz files" in result.stderr


def test_inputs_are_unchanged(run_cli, tmp_path):
    files = [make_nifti(tmp_path / f"{i}.nii.gz", seed=i) for i in range(2)]
    files += list(_bad_files(tmp_path).values())
    before = _digest(files)
    run_cli("info", *files)
    assert _digest(files) == before


def test_a_pipe_or_file_gets_every_column_whole(run_cli, tmp_path, monkeypatch):
    """`neurodl info ... | cat` on a narrow terminal: file names and values are never cut."""
    monkeypatch.setenv("COLUMNS", "40")
    folder = tmp_path / "a-rather-long-folder-name-for-the-derivatives"
    folder.mkdir()
    paths = [make_nifti(folder / f"sub-{i:02d}_desc-preproc_T1w.nii.gz") for i in range(3)]

    result = run_cli("info", *paths)

    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["file", "shape", "voxel_mm"]
    assert [line.split("\t")[0] for line in lines[1:]] == [str(p) for p in paths]
    assert all(len(line.split("\t")) == 10 and "…" not in line for line in lines)
