"""The phantom cohort: reproducible files, tissue contrasts, AD atrophy, geometry and biomarkers."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from neurodl.data.phantom import (
    PARTICIPANT_COLUMNS,
    CohortSummary,
    draw_participant,
    generate_cohort,
    make_phantom,
)
from neurodl.errors import OutputError, UsageError
from neurodl.io.nifti import load_volume, orientation_code, save_volume


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "participants.tsv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "out", n=8, size=24, seed=0)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    first = _files(generate_cohort(tmp_path / "a", n=4, size=20, seed=1).out)
    again = _files(generate_cohort(tmp_path / "b", n=4, size=20, seed=1).out)
    other = _files(generate_cohort(tmp_path / "c", n=4, size=20, seed=2).out)

    assert first == again
    assert first.keys() == other.keys()
    images = [name for name in first if name.endswith(".nii.gz")]
    assert len(images) == 12
    assert all(first[name] != other[name] for name in images)
    # gzip header: no timestamp (bytes 4-8) and no embedded file name (FNAME flag, bit 3).
    assert all(first[name][4:8] == b"\0\0\0\0" and not first[name][3] & 0x08 for name in images)


def test_writes_bids_like_layout_with_a_manifest_whose_paths_resolve(cohort):
    out = cohort.out
    rows = _rows(out)
    assert list(rows[0]) == list(PARTICIPANT_COLUMNS)
    assert [r["participant_id"] for r in rows] == [f"sub-{i:03d}" for i in range(1, 9)]
    for row in rows:
        pid = row["participant_id"]
        assert row["t1"] == f"{pid}/anat/{pid}_T1w.nii.gz"
        assert row["t2"] == f"{pid}/anat/{pid}_T2w.nii.gz"
        assert row["dseg"] == f"{pid}/anat/{pid}_dseg.nii.gz"
        assert all((out / row[c]).is_file() for c in ("t1", "t2", "dseg"))
        assert row["sex"] in {"M", "F"}
        assert 0 <= int(row["severity"]) <= 10
        assert 40 <= int(row["age"]) <= 100
    assert sorted(r["diagnosis"] for r in rows) == ["AD"] * 4 + ["CN"] * 4
    lookup = (out / "dseg.tsv").read_text().splitlines()
    assert lookup[0].split("\t")[:2] == ["index", "name"]
    assert [line.split("\t")[:2] for line in lookup[1:]] == [["1", "CSF"], ["2", "GM"], ["3", "WM"]]
    assert (out / "dataset_description.json").is_file()
    assert (out / "participants.json").is_file()
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_odd_n_is_nearly_balanced(tmp_path):
    summary = generate_cohort(tmp_path / "out", n=5, size=16, seed=0)
    assert (summary.count("CN"), summary.count("AD")) == (3, 2)


def test_images_share_grid_labels_are_tissues_and_contrasts_follow_tissue(cohort):
    for row in _rows(cohort.out):
        t1, t2, dseg = (load_volume(cohort.out / row[c], dtype=None) for c in ("t1", "t2", "dseg"))
        assert t1.shape == t2.shape == dseg.shape
        np.testing.assert_allclose(t1.affine, dseg.affine)
        np.testing.assert_allclose(t2.affine, dseg.affine)
        assert t1.data.dtype == t2.data.dtype == np.int16
        assert dseg.data.dtype == np.uint8
        labels = dseg.data
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        t1_mean = [t1.data[labels == k].mean() for k in (1, 2, 3)]
        t2_mean = [t2.data[labels == k].mean() for k in (1, 2, 3)]
        assert t1_mean[2] > t1_mean[1] > t1_mean[0], f"T1 WM > GM > CSF fails for {row['participant_id']}"
        assert t2_mean[0] > t2_mean[1] > t2_mean[2], f"T2 CSF > GM > WM fails for {row['participant_id']}"


def test_head_fills_most_of_the_field_of_view(cohort):
    row = _rows(cohort.out)[0]
    t1 = load_volume(cohort.out / row["t1"]).data
    head = t1 > 0.3 * np.percentile(t1, 99)
    for axis in range(3):
        extent = np.flatnonzero(head.any(axis=tuple(a for a in range(3) if a != axis)))
        assert (extent[-1] - extent[0] + 1) / t1.shape[axis] > 0.55


def test_cohort_exercises_orientation_and_voxel_size(cohort):
    codes, spacings = set(), set()
    for row in _rows(cohort.out):
        volume = load_volume(cohort.out / row["dseg"], dtype=None)
        codes.add(orientation_code(volume.affine))
        spacings.add(tuple(round(s, 3) for s in volume.spacing))
    assert "RAS" in codes and codes & {"LAS", "LPS"}
    assert (1.0, 1.0, 1.0) in spacings and (1.0, 1.0, 1.5) in spacings


def test_biomarkers_are_counted_on_the_label_map(cohort):
    for row in _rows(cohort.out):
        dseg = load_volume(cohort.out / row["dseg"], dtype=None)
        voxel_ml = abs(np.linalg.det(dseg.affine[:3, :3])) / 1000.0
        csf = np.count_nonzero(dseg.data == 1) * voxel_ml
        brain = np.count_nonzero((dseg.data == 2) | (dseg.data == 3)) * voxel_ml
        assert float(row["csf_volume_ml"]) == pytest.approx(csf, abs=1e-4)
        assert float(row["brain_volume_ml"]) == pytest.approx(brain, abs=1e-4)


def test_ad_has_more_fluid_lower_metabolism_and_higher_severity(cohort):
    rows = _rows(cohort.out)

    def mean(column: str, diagnosis: str) -> float:
        return float(np.mean([float(r[column]) for r in rows if r["diagnosis"] == diagnosis]))

    assert mean("csf_volume_ml", "AD") > mean("csf_volume_ml", "CN")
    assert mean("brain_metabolism", "AD") < mean("brain_metabolism", "CN")
    assert mean("severity", "AD") > mean("severity", "CN")
    assert cohort.mean_csf_ml("AD") > cohort.mean_csf_ml("CN")


def test_atrophy_enlarges_csf_and_shrinks_brain_for_the_same_anatomy():
    healthy = draw_participant(np.random.default_rng(3), "CN")
    atrophied = replace(healthy, diagnosis="AD", atrophy=0.8)
    cn = make_phantom(np.random.default_rng(3), 32, participant=healthy)
    ad = make_phantom(np.random.default_rng(3), 32, participant=atrophied)
    assert ad.csf_volume_ml > 1.5 * cn.csf_volume_ml
    assert ad.brain_volume_ml < cn.brain_volume_ml
    # Enlarged ventricles: more CSF in the central block of the brain.
    centre = (slice(10, 22),) * 3
    assert np.count_nonzero(ad.labels[centre] == 1) > 2 * np.count_nonzero(cn.labels[centre] == 1)


def test_orientation_changes_the_array_layout_not_the_world_geometry():
    ras = make_phantom(np.random.default_rng(5), 24, "AD")
    lps = make_phantom(np.random.default_rng(5), 24, "AD", orientation="LPS")
    assert orientation_code(lps.affine) == "LPS"
    np.testing.assert_array_equal(lps.labels, ras.labels[::-1, ::-1, :])
    np.testing.assert_array_equal(lps.t1, ras.t1[::-1, ::-1, :])
    corner = np.array([0, 0, 0, 1.0])
    opposite = np.array([23, 23, 0, 1.0])
    np.testing.assert_allclose(lps.affine @ corner, ras.affine @ opposite)


def test_anisotropic_subjects_have_fewer_slices_and_the_same_anatomy_in_mm():
    iso = make_phantom(np.random.default_rng(7), 32, "CN")
    thick = make_phantom(np.random.default_rng(7), 32, "CN", spacing=(1.0, 1.0, 1.5))
    assert iso.shape == (32, 32, 32)
    assert thick.shape == (32, 32, 21)

    def brain_centroid_mm(phantom) -> np.ndarray:
        ijk = np.argwhere(phantom.labels >= 2).mean(axis=0)
        return (phantom.affine @ np.append(ijk, 1.0))[:3]

    np.testing.assert_allclose(brain_centroid_mm(thick), brain_centroid_mm(iso), atol=0.5)
    assert thick.brain_volume_ml == pytest.approx(iso.brain_volume_ml, rel=0.05)


def test_a_phantom_volume_carries_its_affine_for_save_volume(tmp_path):
    phantom = make_phantom(np.random.default_rng(0), 16, "CN", orientation="LAS")
    path = save_volume(phantom.labels == 1, tmp_path / "csf.nii.gz", like=phantom.volume("t1"))
    saved = load_volume(path, dtype=None)
    np.testing.assert_allclose(saved.affine, phantom.affine)
    assert saved.orientation == "LAS"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"size": 8}, "--size 8"),
        ({"size": 1000}, "--size 1000"),
        ({"n": 1}, "--n 1"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        generate_cohort(tmp_path / "out", **{"n": 4, "size": 16, **kwargs})
    assert not (tmp_path / "out").exists()


def test_make_phantom_rejects_bad_orientation_and_diagnosis():
    with pytest.raises(UsageError, match="orientation"):
        make_phantom(np.random.default_rng(0), 16, orientation="RRS")
    with pytest.raises(UsageError, match="diagnosis"):
        make_phantom(np.random.default_rng(0), 16, diagnosis="MCI")


def test_refuses_a_non_empty_folder_or_a_file_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        generate_cohort(out, n=2, size=16)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        generate_cohort(a_file, n=2, size=16, overwrite=True)

    generate_cohort(out, n=4, size=16, overwrite=True)
    summary = generate_cohort(out, n=2, size=16, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-001", "sub-002"]
    assert len(summary.removed) == 6
