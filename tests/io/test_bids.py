"""A BIDS dataset root stands in for a manifest: one row per image, tables joined, the rest skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from neurodl.data.inputs import resolve_inputs
from neurodl.errors import ManifestError, UsageError
from neurodl.io.bids import is_ignored, manifest_text, parse_bids_name, parse_filters, resolve_bids
from neurodl.io.manifest import load_manifest
from neurodl_testing import make_nifti
from neurodl_testing.bids import SKIPPED, T1W, make_bids_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bids_dataset(tmp_path_factory.mktemp("bids") / "ds")


def test_one_row_per_image_with_participant_session_and_run_from_the_path(dataset):
    manifest = load_manifest(dataset, ["T1w"], "diagnosis")
    rows = manifest.frame

    relative = sorted(str(p[0].relative_to(dataset)) for p in manifest.image_files)
    expected = sorted(p for p in [*T1W, "sub-04/anat/sub-04_acq-spgr_T1w.nii.gz"] if "sub-07" not in p)
    assert relative == expected  # sub-07 has no diagnosis: left out (see the warning test)
    assert manifest.participant_source == "column"
    sessions = rows[rows.participant_id == "sub-01"]
    assert list(sessions.session_id) == ["ses-01", "ses-02"]
    runs = rows[rows.participant_id == "sub-02"]
    assert list(runs.run) == ["1", "2"]
    acquisitions = rows[rows.participant_id == "sub-04"]
    assert list(acquisitions.acq) == ["mprage", "spgr"]
    assert manifest.image_paths(0)[0].is_absolute() and manifest.image_paths(0)[0].exists()


def test_derivatives_sourcedata_hidden_folders_and_bidsignore_are_skipped(dataset):
    manifest = load_manifest(dataset, ["T1w"], None)

    found = {str(p[0].relative_to(dataset)) for p in manifest.image_files}
    assert not found & set(SKIPPED)
    assert len(manifest) == len(T1W) + 1  # every listed T1w and sub-04's acq-spgr


def test_labels_come_from_participants_and_per_session_values_from_sessions_tsv(dataset):
    frame = load_manifest(dataset, ["T1w"], "diagnosis").frame.set_index(["participant_id", "session_id"])

    assert frame.loc[("sub-01", "ses-01"), "age"] == 70  # sessions.tsv wins over participants.tsv (61)
    assert frame.loc[("sub-01", "ses-02"), "age"] == 72.5
    assert frame.loc[("sub-03", "ses-01"), "age"] == 63  # no sessions.tsv: participants.tsv
    assert frame.loc[("sub-01", "ses-02"), "diagnosis"] == "AD"


def test_participants_without_images_and_images_without_a_row_are_named(tmp_path, caplog):
    dataset = make_bids_dataset(tmp_path / "ds")  # a new path: each warning is logged once per dataset
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(dataset, ["T1w"], "diagnosis")
        load_manifest(dataset, ["T1w"], "diagnosis")

    text = "\n".join(manifest.warnings)
    assert "participants.tsv without a T1w image: sub-09" in text
    assert "no row in participants.tsv" in text and "sub-07" in text
    assert "without a 'diagnosis' value" in text
    assert caplog.text.count("sub-09") == 1  # on stderr once, however often the dataset is read
    assert "sub-07" not in set(manifest.participant_ids)


def test_channels_are_paired_by_session_and_run_and_unpaired_images_left_out(dataset):
    manifest = load_manifest(dataset, ["T1w", "T2w"], "dseg")

    assert manifest.label_is_image
    for row in range(len(manifest)):
        t1, t2 = (p.name for p in manifest.image_paths(row))
        assert t1.replace("_T1w", "_T2w") == t2
        assert manifest.label_path(row).name == t1.replace("_T1w", "_dseg")
    assert "sub-10" not in set(manifest.participant_ids)
    assert any("without a T2w image" in w and "sub-10" in w for w in manifest.warnings)

    # Checked (not trained) the same rows stay, the missing ones reported as empty cells.
    checked = load_manifest(dataset, ["T1w", "T2w"], None, require_files=False)
    assert "sub-10" in set(checked.participant_ids)
    assert any(issue.column == "T2w" for issue in checked.issues)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["acq=mprage"], {"sub-04"}),
        (["ses=01"], {"sub-01", "sub-03"}),
        (["ses=ses-02", "sub=01"], {"sub-01"}),
        (["run=01"], {"sub-02"}),
        (["sub=01", "sub=05,06"], {"sub-01", "sub-05", "sub-06"}),
    ],
)
def test_entity_filters(dataset, filters, expected):
    manifest = load_manifest(dataset, ["T1w"], None, bids_filter=filters)

    assert set(manifest.participant_ids) == expected


def test_a_filter_that_matches_nothing_lists_the_values_there_are(dataset):
    with pytest.raises(ManifestError, match=r"no T1w image matches --bids-filter ses=03.*ses: 01, 02"):
        load_manifest(dataset, ["T1w"], None, bids_filter=["ses=03"])
    with pytest.raises(UsageError, match="ENTITY=VALUE"):
        parse_filters(["acq"])
    with pytest.raises(UsageError, match="is a table"):
        load_manifest(dataset / "participants.tsv", ["T1w"], None, bids_filter=["ses=01"])


def test_a_suffix_that_is_not_there_lists_the_suffixes_found(dataset):
    with pytest.raises(ManifestError) as error:
        load_manifest(dataset, ["T1"], "diagnosis")

    assert "'T1'" in error.value.message
    assert "T1w (13)" in error.value.message and "T2w (12)" in error.value.message
    assert "--image" in (error.value.fix or "")


def test_a_folder_that_is_not_a_bids_root_says_what_was_looked_for(tmp_path):
    make_nifti(tmp_path / "scans" / "a.nii.gz")
    with pytest.raises(ManifestError) as error:
        load_manifest(tmp_path / "scans", ["T1w"], None)
    assert "dataset_description.json" in error.value.message and "sub-*" in error.value.message

    subject = tmp_path / "study" / "sub-01"
    make_nifti(subject / "anat" / "sub-01_T1w.nii.gz")
    with pytest.raises(ManifestError, match="dataset root is"):
        load_manifest(subject, ["T1w"], None)


def test_sessions_of_one_participant_share_the_grouping_key(dataset):
    from neurodl.data.splits import split_by_participant

    manifest = load_manifest(dataset, ["T1w"], "diagnosis")
    groups = manifest.participants.to_numpy(dtype=str)
    for seed in range(5):
        kept, held = split_by_participant(groups, manifest.labels.to_numpy(dtype=str), 0.3, seed)
        assert not set(groups[kept]) & set(groups[held])


def test_the_written_manifest_reads_back_as_the_same_table(dataset, tmp_path):
    root_manifest = load_manifest(dataset, ["T1w", "T2w"], "diagnosis")
    out = tmp_path / "elsewhere" / "manifest.tsv"
    out.parent.mkdir()
    out.write_text(manifest_text(root_manifest, out))

    written = load_manifest(out, ["T1w", "T2w"], "diagnosis")

    assert written.image_files == root_manifest.image_files
    assert written.participant_ids == root_manifest.participant_ids
    assert written.frame.drop(columns=["T1w", "T2w"]).equals(root_manifest.frame.drop(columns=["T1w", "T2w"]))
    assert not out.read_text().count(str(dataset))  # relative to the manifest's folder


def test_predict_inputs_a_root_or_a_subject_folder(dataset):
    images, manifest = resolve_inputs([dataset], image_columns=["T1w"])
    assert manifest is not None and len(images) == len(T1W) + 1

    images, manifest = resolve_inputs([dataset / "sub-01"], image_columns=["T1w", "T2w"])
    assert manifest is None
    assert [i.name for i in images] == ["sub-01_ses-01_T1w", "sub-01_ses-02_T1w"]
    assert all(i.participant == "sub-01" for i in images)
    assert [p.name for p in images[1].paths] == ["sub-01_ses-02_T1w.nii.gz", "sub-01_ses-02_T2w.nii.gz"]

    # A folder of files not named by BIDS suffixes is a plain folder, as before.
    images, _ = resolve_inputs([dataset / "sub-05" / "anat"], image_columns=["t1"])
    assert len(images) == 3  # T1w, T2w and dseg: the model's column is not a suffix


def test_bids_names_and_ignore_patterns():
    assert parse_bids_name("sub-01_ses-2_acq-mprage_run-1_T1w.nii.gz") == (
        (("sub", "01"), ("ses", "2"), ("acq", "mprage"), ("run", "1")),
        "T1w",
    )
    assert parse_bids_name("T1w.nii.gz") is None
    assert parse_bids_name("sub-01_T1w.json") is None
    assert parse_bids_name("sub-01_bad_T1w.nii") is None
    assert is_ignored("sub-01/anat/sub-01_acq-defaced_T1w.nii.gz", ["*_acq-defaced_*"])
    assert is_ignored("sub-01/extra", ["extra/"], folder=True)
    assert not is_ignored("sub-01/extra", ["extra/"])
    assert is_ignored("sub-01/anat/x.nii", ["/sub-01/anat/*"])
    assert not is_ignored("sub-02/anat/x.nii", ["/sub-01/anat/*"])


def test_resolve_without_tables_has_the_identity_columns_only(tmp_path):
    make_nifti(tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz")
    table = resolve_bids(tmp_path, ["T1w"])

    assert table.columns == ("participant_id", "T1w")
    assert table.warnings == ()
