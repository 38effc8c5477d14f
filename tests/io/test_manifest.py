"""Manifests: paths relative to the manifest, one error that lists every missing thing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neurodl.errors import InputFileError, ManifestError
from neurodl.io.manifest import load_manifest, looks_like_nifti_column, participant_from_path
from neurodl.io.tables import format_rows, read_table, require_columns
from neurodl_testing import make_nifti


def _cohort(root: Path, n: int = 3, sep: str = ",", name: str = "manifest.csv") -> Path:
    """sub-XX/anat/sub-XX_{T1w,T2w}.nii.gz and a manifest with relative paths."""
    lines = [sep.join(["participant_id", "t1", "t2", "diagnosis"])]
    for i in range(1, n + 1):
        sub = f"sub-{i:02d}"
        files = []
        for suffix in ("T1w", "T2w"):
            rel = f"{sub}/anat/{sub}_{suffix}.nii.gz"
            make_nifti(root / rel, shape=(4, 4, 4), seed=i)
            files.append(rel)
        lines.append(sep.join([sub, *files, "AD" if i % 2 else "CN"]))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("sep", "name"), [(",", "manifest.csv"), ("\t", "participants.tsv")])
def test_paths_are_relative_to_the_manifest_folder(tmp_path, monkeypatch, sep, name):
    data = tmp_path / "study"
    manifest_path = _cohort(data, sep=sep, name=name)
    monkeypatch.chdir(tmp_path)  # not the manifest's folder

    manifest = load_manifest(Path("study") / name, ["t1", "t2"], "diagnosis")

    assert len(manifest) == 3
    assert manifest.root == data
    assert manifest.image_columns == ("t1", "t2")
    assert manifest.image_paths(1) == [
        data / "sub-02/anat/sub-02_T1w.nii.gz",
        data / "sub-02/anat/sub-02_T2w.nii.gz",
    ]
    assert all(p.is_absolute() and p.exists() for p in manifest.image_paths(0))
    assert list(manifest.participants) == ["sub-01", "sub-02", "sub-03"]
    assert list(manifest.labels) == ["AD", "CN", "AD"]
    assert manifest.participant_source == "column"
    assert manifest_path.exists()


def test_absolute_paths_are_kept(tmp_path):
    image = make_nifti(tmp_path / "elsewhere" / "x.nii.gz", shape=(4, 4, 4))
    (tmp_path / "m").mkdir()
    manifest_path = tmp_path / "m" / "list.csv"
    manifest_path.write_text(f"participant_id,t1\np1,{image}\n")
    assert load_manifest(manifest_path, ["t1"]).image_paths(0) == [image]


def test_missing_column_lists_missing_and_available(tmp_path):
    path = _cohort(tmp_path)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, ["t1", "flair"], "dx")
    message = str(caught.value)
    assert "'flair'" in message and "'dx'" in message
    assert "Available columns: participant_id, t1, t2, diagnosis" in message
    assert str(path) in message


def test_missing_files_are_listed_in_one_error_with_rows(tmp_path):
    path = _cohort(tmp_path, n=3)
    for sub in ("sub-01", "sub-03"):
        (tmp_path / sub / "anat" / f"{sub}_T2w.nii.gz").unlink()

    with pytest.raises(ManifestError) as caught:
        load_manifest(path, ["t1", "t2"])

    message = str(caught.value)
    assert "2 missing files" in message
    assert "row 1, column 't2': sub-01/anat/sub-01_T2w.nii.gz: file does not exist" in message
    assert "row 3, column 't2': sub-03/anat/sub-03_T2w.nii.gz" in message
    assert "sub-02" not in message
    assert str(tmp_path) in caught.value.fix  # says where relative paths start


def test_many_missing_files_are_shortened(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("t1\n" + "".join(f"sub-{i:02d}_T1w.nii.gz\n" for i in range(25)))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, ["t1"])
    message = str(caught.value)
    assert "25 missing files" in message
    assert "and 15 more" in message
    assert "row 10," in message and "row 11," not in message


def test_empty_path_cells_are_named_by_row_and_column(tmp_path):
    path = _cohort(tmp_path, n=3)
    text = path.read_text().replace("sub-02/anat/sub-02_T2w.nii.gz", "")
    path.write_text(text)
    with pytest.raises(ManifestError, match=r"row 2, column 't2': the image path is empty"):
        load_manifest(path, ["t1", "t2"])


def test_lenient_mode_collects_issues(tmp_path):
    path = _cohort(tmp_path, n=3)
    (tmp_path / "sub-03/anat/sub-03_T1w.nii.gz").unlink()
    path.write_text(path.read_text().replace("sub-02/anat/sub-02_T2w.nii.gz", " "))

    manifest = load_manifest(path, ["t1", "t2"], require_files=False)

    assert [(i.row, i.column) for i in manifest.issues] == [(1, "t2"), (2, "t1")]
    assert manifest.issues[1].file == tmp_path / "sub-03/anat/sub-03_T1w.nii.gz"
    with pytest.raises(ManifestError, match="row 2, column 't2' is empty"):
        manifest.image_paths(1)


def test_participants_from_bids_file_names_when_column_is_absent(tmp_path):
    path = tmp_path / "m.csv"
    rows = []
    for sub, ses in (("sub-01", "1"), ("sub-01", "2"), ("sub-02", "1")):
        rel = f"{sub}/ses-{ses}/anat/{sub}_ses-{ses}_T1w.nii.gz"
        make_nifti(tmp_path / rel, shape=(4, 4, 4))
        rows.append(rel)
    path.write_text("t1\n" + "\n".join(rows) + "\n")

    manifest = load_manifest(path, ["t1"])

    assert manifest.participant_source == "filename"
    assert list(manifest.participants) == ["sub-01", "sub-01", "sub-02"]


def test_each_row_is_its_own_participant_without_column_or_bids_names(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz"):
        make_nifti(tmp_path / name, shape=(4, 4, 4))
    path = tmp_path / "m.csv"
    path.write_text("t1\na.nii.gz\nb.nii.gz\n")
    manifest = load_manifest(path, ["t1"])
    assert manifest.participant_source == "row"
    assert list(manifest.participants) == ["row-1", "row-2"]


def test_a_named_participant_column_must_exist(tmp_path):
    path = _cohort(tmp_path)
    with pytest.raises(ManifestError, match="no column 'subject'"):
        load_manifest(path, ["t1"], participant_column="subject")


def test_participant_ids_keep_leading_zeros(tmp_path):
    make_nifti(tmp_path / "a.nii.gz", shape=(4, 4, 4))
    path = tmp_path / "m.csv"
    path.write_text("participant_id,t1\n007,a.nii.gz\n")
    assert list(load_manifest(path, ["t1"]).participants) == ["007"]


def test_image_columns_are_detected_from_values(tmp_path):
    path = _cohort(tmp_path)
    manifest = load_manifest(path, None, "diagnosis")
    assert manifest.image_columns == ("t1", "t2")
    assert manifest.image_columns_detected


def test_no_image_column_is_a_clear_error(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t70\n")
    with pytest.raises(ManifestError, match="no column holds NIfTI paths") as caught:
        load_manifest(path)
    assert "--image" in caught.value.fix


def test_label_column_of_nifti_paths_is_a_mask_column(tmp_path):
    make_nifti(tmp_path / "t1.nii.gz", shape=(4, 4, 4))
    make_nifti(tmp_path / "seg.nii.gz", shape=(4, 4, 4))
    path = tmp_path / "m.csv"
    path.write_text("t1,seg\nt1.nii.gz,seg.nii.gz\n")
    manifest = load_manifest(path, ["t1"], "seg")
    assert manifest.label_is_image
    assert manifest.label_path(0) == tmp_path / "seg.nii.gz"


def test_label_that_is_also_an_image_column_is_refused(tmp_path):
    path = _cohort(tmp_path)
    with pytest.raises(ManifestError, match="both an image column and the label"):
        load_manifest(path, ["t1"], "t1")


def test_empty_labels_are_named(tmp_path):
    path = _cohort(tmp_path)
    path.write_text(path.read_text().replace(",CN\n", ",n/a\n"))
    with pytest.raises(ManifestError, match=r"row 2, column 'diagnosis': the label is empty"):
        load_manifest(path, ["t1"], "diagnosis")


# --- read_table ------------------------------------------------------------------------------


def test_read_table_sniffs_semicolons_and_reads_bids_na(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("participant_id;age\nsub-01;n/a\nsub-02;70\n")
    frame = read_table(path)
    assert list(frame.columns) == ["participant_id", "age"]
    assert frame["age"].isna().tolist() == [True, False]


def test_read_table_accepts_a_csv_misnamed_tsv(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id,age\nsub-01,70\n")
    assert list(read_table(path).columns) == ["participant_id", "age"]


def test_read_table_refuses_duplicated_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("age,sex,age\n1,F,2\n")
    with pytest.raises(InputFileError, match="duplicated column names: age"):
        read_table(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"a,b\n", "no rows"), (b"\xff\xfe\x00a", "not UTF-8|binary")],
)
def test_read_table_bad_files(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        read_table(path)


def test_require_columns_names_all_missing(tmp_path):
    frame = read_table(_cohort(tmp_path))
    with pytest.raises(ManifestError, match="no columns 'a', 'b'"):
        require_columns(frame, ["a", "t1", "b"], "m.csv")


def test_format_rows_is_one_based_and_short():
    assert format_rows([0, 1]) == "1, 2"
    assert format_rows(list(range(12)), limit=3) == "1, 2, 3 and 9 more"


def test_helpers():
    assert participant_from_path("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz") == "sub-01"
    assert participant_from_path("derivatives/sub-ab12/x.nii") == "sub-ab12"
    assert participant_from_path("subject01_T1w.nii.gz") is None
    assert looks_like_nifti_column(["a.nii", "b.NII.GZ", None])
    assert not looks_like_nifti_column(["AD", "CN"])


def test_importing_the_module_does_not_import_pandas():
    code = "import sys, neurodl.io.manifest; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
