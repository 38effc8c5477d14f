"""`neurodl segment` end to end on a tiny phantom cohort: masks in each input's own grid, volumes, batch mode."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.data.phantom import generate_cohort, make_phantom
from neurodl.models import create_model, list_models

LABELS = {1: "CSF", 2: "GM", 3: "WM"}
# 24 mm phantoms at 1.5 mm are 16^3 volumes: one 16^3 patch per window. 30 epochs of ~0.1 s
# (one thread) give a mean Dice ~0.45 (WM ~0.65) on a new subject; a flipped mask scores < 0.15.
TINY = [
    "--model",
    "unet",
    "--patch",
    "16",
    "--spacing",
    "1.5",
    "--epochs",
    "30",
    "--samples-per-image",
    "2",
    "--batch-size",
    "2",
    "--augment",
    "none",
    "--quiet",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """3D convolutions on a busy 2-core machine run far faster on one thread than on contended threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=12, size=24, seed=3)
    return root / "participants.tsv"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort_before(cohort: Path) -> dict[str, str]:
    """Every file of the cohort, hashed before any command reads it."""
    return snapshot(cohort.parent)


@pytest.fixture(scope="module")
def trained(cohort: Path, cohort_before: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "unet"
    code = main(
        [
            "segment",
            "train",
            str(cohort),
            "--image",
            "t1",
            "--mask",
            "dseg",
            "--test-fraction",
            "0.25",
            "--out",
            str(run),
            *TINY,
        ]
    )
    assert code == 0
    return run


def flat(text: str) -> str:
    """Console text with Rich's line wrapping undone."""
    return " ".join(text.split())


def dice(predicted: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    return {
        k: 2.0
        * np.count_nonzero((predicted == k) & (truth == k))
        / max(1, np.count_nonzero(predicted == k) + np.count_nonzero(truth == k))
        for k in LABELS
    }


def las_anisotropic_subject(folder: Path, seed: int = 11) -> tuple[Path, Path]:
    """A phantom stored LAS with 1 x 1 x 1.5 mm voxels, padded unevenly so that any flip misplaces it.

    The phantom is nearly symmetric about its centre; air added on one side of each axis
    (and an arbitrary origin) makes a mask flipped along any axis land off the head.
    """
    phantom = make_phantom(np.random.default_rng(seed), size=24, spacing=(1.0, 1.0, 1.5), orientation="LAS")
    pad = ((10, 0), (0, 10), (6, 0))
    t1 = np.pad(phantom.t1, pad)
    labels = np.pad(phantom.labels, pad)
    shift = np.eye(4)
    shift[:3, 3] = [-10, 0, -6]  # voxel (10, 0, 6) of the padded array is voxel (0, 0, 0) of the phantom
    affine = phantom.affine @ shift
    affine[:3, 3] += [7.0, -3.0, 12.0]
    folder.mkdir(parents=True, exist_ok=True)
    image, mask = folder / "las_T1w.nii.gz", folder / "las_dseg.nii.gz"
    nib.save(nib.Nifti1Image(t1, affine), str(image))
    nib.save(nib.Nifti1Image(labels, affine), str(mask))
    return image, mask


def test_las_anisotropic_fixture_is_what_it_claims(tmp_path: Path):
    image, mask = las_anisotropic_subject(tmp_path)
    loaded = nib.load(str(image))
    assert nib.aff2axcodes(loaded.affine) == ("L", "A", "S")
    assert np.allclose(loaded.header.get_zooms(), (1.0, 1.0, 1.5))
    assert np.allclose(nib.load(str(mask)).affine, loaded.affine)
    assert set(np.unique(np.asarray(nib.load(str(mask)).dataobj)).tolist()) == {0, 1, 2, 3}


SLOW_SEGMENTERS = {"swin_unetr"}  # 64^3 at least: seconds on a CPU


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(e.name, marks=pytest.mark.slow) if e.name in SLOW_SEGMENTERS else e.name
        for e in list_models("segment")
    ],
)
def test_every_segmenter_does_forward_and_backward_on_a_small_patch(name: str):
    model = create_model("segment", name, in_channels=2, out_channels=4)
    multiple, minimum = int(model.patch_multiple), int(model.min_patch)
    patch = multiple * -(-minimum // multiple)  # smallest multiple of patch_multiple >= min_patch
    output = model(torch.randn(1, 2, patch, patch, patch))
    assert output.shape == (1, 4, patch, patch, patch)
    output.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_train_writes_a_complete_run(trained: Path):
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "splits.json",
        "history.csv",
        "metrics.json",
        "learning_curves.png",
        "test_manifest.tsv",
    ):
        assert (trained / name).is_file(), name
    prep = json.loads((trained / "preprocessing.json").read_text())
    assert prep["labels"] == {"values": [0, 1, 2, 3], "names": ["background", "CSF", "GM", "WM"]}
    assert prep["images"]["spacing"] == [1.5, 1.5, 1.5] and prep["patch"] == [16, 16, 16]
    splits = json.loads((trained / "splits.json").read_text())
    assert splits["test"] and not set(splits["test"]) & set(splits["training_participants"])
    assert {"dice", "dice_CSF", "dice_GM", "dice_WM"} <= set(
        json.loads((trained / "metrics.json").read_text())["test"]
    )


def test_mask_of_a_las_anisotropic_volume_has_its_grid_and_overlays_it(
    run_cli, trained: Path, tmp_path: Path
):
    image, mask = las_anisotropic_subject(tmp_path / "in")
    result = run_cli(
        "segment", "predict", "--model", trained, image, "-o", tmp_path / "out", "--probabilities", "--quiet"
    )
    assert result.exit_code == 0, result.output
    source = nib.load(str(image))
    written = nib.load(str(tmp_path / "out" / "las_T1w_dseg.nii.gz"))
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(written.affine) == ("L", "A", "S")
    assert np.allclose(written.header.get_zooms(), (1.0, 1.0, 1.5))
    assert written.get_data_dtype() == np.uint8
    predicted = np.asarray(written.dataobj)
    assert predicted.dtype == np.uint8
    assert set(np.unique(predicted).tolist()) <= {0, 1, 2, 3}

    truth = np.asarray(nib.load(str(mask)).dataobj)
    scores = dice(predicted, truth)
    score = float(np.mean(list(scores.values())))
    assert scores[3] > 0.5, scores
    assert score > 0.35, scores
    for axis in range(3):  # a flipped mask (orientation error) lands off the head
        flipped = float(np.mean(list(dice(np.flip(predicted, axis), truth).values())))
        assert score > flipped + 0.2, (axis, score, flipped)

    probabilities = nib.load(str(tmp_path / "out" / "las_T1w_probseg.nii.gz"))
    assert probabilities.shape == (*source.shape, 4)
    assert np.allclose(probabilities.affine, source.affine, atol=1e-5)
    p = np.asarray(probabilities.dataobj)
    assert np.allclose(p.sum(axis=-1), 1.0, atol=1e-4)
    assert np.array_equal(p.argmax(axis=-1), predicted)


def test_the_same_head_stored_ras_or_las_gets_the_same_mask_in_world_space(
    run_cli, trained: Path, tmp_path: Path
):
    las, _ = las_anisotropic_subject(tmp_path / "in")
    ras = tmp_path / "in" / "ras_T1w.nii.gz"
    nib.save(nib.as_closest_canonical(nib.load(str(las))), str(ras))
    assert nib.aff2axcodes(nib.load(str(ras)).affine) == ("R", "A", "S")
    result = run_cli("segment", "predict", "--model", trained, las, ras, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    from_las = nib.as_closest_canonical(nib.load(str(tmp_path / "out" / "las_T1w_dseg.nii.gz")))
    from_ras = nib.load(str(tmp_path / "out" / "ras_T1w_dseg.nii.gz"))
    assert np.allclose(from_las.affine, from_ras.affine, atol=1e-5)
    agreement = np.mean(np.asarray(from_las.dataobj) == np.asarray(from_ras.dataobj))
    assert agreement > 0.99


def test_predict_prints_no_python_warnings(run_cli, trained: Path, tmp_path: Path):
    image, _ = las_anisotropic_subject(tmp_path / "in")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("segment", "predict", "--model", trained, image, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_volumes_are_voxel_counts_times_voxel_volume_and_feed_biomarkers(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    volumes = tmp_path / "volumes.csv"
    result = run_cli(
        "segment",
        "predict",
        "--model",
        trained,
        cohort,
        "-o",
        tmp_path / "masks",
        "--volumes",
        volumes,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(volumes)
    manifest = pd.read_csv(cohort, sep="\t")
    assert table["participant_id"].tolist() == manifest["participant_id"].tolist()
    assert table["diagnosis"].tolist() == manifest["diagnosis"].tolist()  # the manifest's other columns
    assert table["age"].tolist() == manifest["age"].tolist()
    assert {"csf_volume_ml", "gm_volume_ml", "wm_volume_ml", "mask"} <= set(table.columns)
    # The table lives in another folder than the manifest: every image path in it is absolute.
    for column in ("image", "mask", "t2", "dseg"):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in table[column]), column
    voxel_sizes = set()
    for _, row in table.iterrows():
        mask = nib.load(str(row["mask"]))
        source = nib.load(
            str(cohort.parent / manifest.set_index("participant_id").at[row["participant_id"], "t1"])
        )
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-5)
        values = np.asarray(mask.dataobj)
        voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
        voxel_sizes.add(round(voxel_ml * 1000, 3))
        for value, name in LABELS.items():
            expected = np.count_nonzero(values == value) * voxel_ml
            # mL to 3 decimals (1 mm^3): within half a unit of the last decimal.
            assert row[f"{name.lower()}_volume_ml"] == pytest.approx(expected, abs=5e-4 + 1e-9), (
                row,
                name,
            )
    assert voxel_sizes == {
        1.0,
        1.5,
    }  # isotropic and 1 x 1 x 1.5 mm subjects both measured in their own voxels
    assert table["wm_volume_ml"].gt(0).all()

    bio = run_cli(
        "biomarkers",
        "train",
        volumes,
        "--target",
        "diagnosis",
        "--features",
        "csf_volume_ml",
        "--epochs",
        "2",
        "--out",
        tmp_path / "bio",
        "--quiet",
    )
    assert bio.exit_code == 0, bio.output
    assert (tmp_path / "bio" / "model.safetensors").is_file()


def test_batch_predict_keeps_existing_masks_and_overwrite_redoes_them(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    frame = pd.read_csv(cohort, sep="\t")
    inputs = [cohort.parent / p for p in frame["t1"].iloc[:3]]
    out = tmp_path / "out"
    first = run_cli("segment", "predict", "--model", trained, *inputs, "-o", out, "--quiet")
    assert first.exit_code == 0, first.output
    assert "3 masks written" in flat(first.stderr)
    masks = [out / p.name.replace("_T1w.nii.gz", "_T1w_dseg.nii.gz") for p in inputs]
    old = 1_000_000_000
    for mask in masks:
        os.utime(mask, ns=(old, old))
    before = [digest(m) for m in masks]

    again = run_cli(
        "segment",
        "predict",
        "--model",
        trained,
        *inputs,
        "-o",
        out,
        "--volumes",
        tmp_path / "v.csv",
        "--quiet",
    )
    assert again.exit_code == 0, again.output
    assert "0 masks written" in flat(again.stderr) and "3 existing kept" in flat(again.stderr)
    assert [digest(m) for m in masks] == before
    assert all(m.stat().st_mtime_ns == old for m in masks)
    kept = pd.read_csv(tmp_path / "v.csv")  # kept masks are still measured
    assert len(kept) == 3 and kept["wm_volume_ml"].gt(0).all()

    redo = run_cli("segment", "predict", "--model", trained, *inputs, "-o", out, "--overwrite", "--quiet")
    assert redo.exit_code == 0, redo.output
    assert "3 masks written" in flat(redo.stderr) and "existing kept" not in flat(redo.stderr)
    assert all(m.stat().st_mtime_ns != old for m in masks)


def test_batch_predict_reports_a_corrupt_file_and_writes_the_others(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    good = cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    other = cohort.parent / "sub-002/anat/sub-002_T1w.nii.gz"
    corrupt = tmp_path / "corrupt_T1w.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:200])
    out = tmp_path / "out"
    result = run_cli("segment", "predict", "--model", trained, good, corrupt, other, "-o", out, "--quiet")
    assert result.exit_code == 2
    assert "corrupt_T1w" in result.stderr and "1 of 3 inputs failed" in flat(result.stderr)
    assert (out / "sub-001_T1w_dseg.nii.gz").is_file() and (out / "sub-002_T1w_dseg.nii.gz").is_file()
    assert not (out / "corrupt_T1w_dseg.nii.gz").exists()
    assert "Traceback" not in result.output


def test_evaluate_held_out_writes_dice_and_hd95_and_refuses_training_participants(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    result = run_cli(
        "segment",
        "evaluate",
        "--model",
        trained,
        trained / "test_manifest.tsv",
        "--out",
        tmp_path / "eval",
        "--json",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    expected = {"dice_CSF", "dice_GM", "dice_WM", "hd95_CSF_mm", "hd95_GM_mm", "hd95_WM_mm"}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert expected <= set(metrics) and metrics["images"] == 3
    assert expected <= set(json.loads(result.stdout))
    per_image = pd.read_csv(tmp_path / "eval" / "per_image.csv")
    assert len(per_image) == 3 and expected <= set(per_image.columns)
    assert per_image["dice_WM"].between(0.5, 1.0).all()
    assert (per_image[[c for c in expected if c.startswith("hd95")]] >= 0).all().all()

    refused = run_cli("segment", "evaluate", "--model", trained, cohort, "--quiet")
    assert refused.exit_code == 2
    assert "--allow-overlap" in refused.stderr and "used to train or select the model" in flat(refused.stderr)


def mask_on_another_grid(cohort: Path, folder: Path, rows: int) -> tuple[Path, Path]:
    """A manifest (absolute paths) of the first ``rows`` test subjects whose first mask lost two slices."""
    frame = pd.read_csv(cohort, sep="\t").iloc[:rows].copy()
    for column in ("t1", "t2", "dseg"):
        frame[column] = [str(cohort.parent / p) for p in frame[column]]
    source = nib.load(frame["dseg"].iloc[0])
    folder.mkdir(parents=True, exist_ok=True)
    cropped = folder / "cropped_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[:-2], source.affine), str(cropped))
    frame.loc[frame.index[0], "dseg"] = str(cropped)
    manifest = folder / "manifest.tsv"
    frame.to_csv(manifest, sep="\t", index=False)
    return manifest, cropped


def test_mask_on_another_grid_is_refused_in_train(run_cli, cohort: Path, tmp_path: Path):
    manifest, _ = mask_on_another_grid(cohort, tmp_path / "data", rows=6)
    result = run_cli("segment", "train", manifest, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 2
    assert "cropped_dseg.nii.gz" in result.stderr and "grid" in result.stderr and "row 1" in result.stderr
    assert "Traceback" not in result.output


def test_mask_on_another_grid_is_reported_in_evaluate(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    manifest, _ = mask_on_another_grid(cohort, tmp_path / "data", rows=2)
    result = run_cli("segment", "evaluate", "--model", trained, manifest, "--allow-overlap", "--quiet")
    assert result.exit_code == 2
    assert "cropped_dseg.nii.gz" in result.stderr and "grid" in result.stderr
    assert "1 of 2 inputs failed" in flat(result.stderr)


def test_the_only_row_with_a_mask_on_another_grid_is_named_in_evaluate(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    manifest, _ = mask_on_another_grid(cohort, tmp_path / "data", rows=1)
    result = run_cli("segment", "evaluate", "--model", trained, manifest, "--allow-overlap", "--quiet")
    assert result.exit_code == 2
    assert "cropped_dseg.nii.gz" in result.stderr and "grid" in result.stderr


def test_bad_arguments_exit_2_with_a_message(run_cli, cohort: Path, tmp_path: Path):
    result = run_cli("segment", "train", cohort, "--mask", "diagnosis", "--out", tmp_path / "a", *TINY)
    assert result.exit_code == 2
    assert "'diagnosis'" in result.stderr and "label images" in result.stderr

    patch = TINY.index("--patch") + 1
    bad_patch = [*TINY[:patch], "20", *TINY[patch + 1 :]]
    result = run_cli("segment", "train", cohort, "--out", tmp_path / "b", *bad_patch)
    assert result.exit_code == 2
    assert "--patch 20" in result.stderr and "multiple of 8" in result.stderr and "unet" in result.stderr
    assert not (tmp_path / "b").exists()
    assert "Traceback" not in result.output


def test_run_directory_from_another_task_is_refused(run_cli, cohort: Path, tmp_path: Path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"x": np.arange(20.0), "y": ["a", "b"] * 10}).to_csv(table, index=False)
    trained_bio = run_cli(
        "biomarkers", "train", table, "--target", "y", "--epochs", "1", "--out", tmp_path / "bio", "--quiet"
    )
    assert trained_bio.exit_code == 0, trained_bio.output
    result = run_cli(
        "segment", "predict", "--model", tmp_path / "bio", cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    )
    assert result.exit_code == 2
    assert "is a 'biomarkers' run, not a 'segment' run" in flat(result.stderr)


def test_outputs_never_overwrite_inputs(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    source = cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    (folder / "head.nii.gz").write_bytes(source.read_bytes())
    (folder / "head_dseg.nii.gz").write_bytes(source.read_bytes())  # where head's mask would go
    before = snapshot(folder)
    result = run_cli("segment", "predict", "--model", trained, folder, "-o", folder, "--overwrite", "--quiet")
    assert result.exit_code == 2
    assert "is also an input" in flat(result.stderr) and "1 of 2 inputs failed" in flat(result.stderr)
    after = snapshot(folder)
    assert {
        k: after[k] for k in before
    } == before  # inputs untouched; head_dseg's own mask was written beside
    assert set(after) - set(before) == {"head_dseg_dseg.nii.gz"}

    volumes_over_manifest = run_cli(
        "segment",
        "predict",
        "--model",
        trained,
        cohort,
        "-o",
        tmp_path / "m",
        "--volumes",
        cohort,
        "--overwrite",
    )
    assert volumes_over_manifest.exit_code == 2 and "is also an input" in flat(volumes_over_manifest.stderr)


def test_no_command_modified_or_added_files_in_the_cohort(cohort: Path, cohort_before: dict[str, str]):
    """Runs last in this module: everything above read the cohort, none may have written to it."""
    assert snapshot(cohort.parent) == cohort_before


def test_bf16_on_cpu_is_refused_with_the_reason(run_cli, cohort: Path, tmp_path: Path):
    """bf16 autocast on a CPU diverged (NaN at epoch 2) and is slower than fp32: exit 2, never a NaN run."""
    result = run_cli(
        "segment", "train", cohort, "--image", "t1", "--mask", "dseg", "--out", tmp_path / "run",
        *TINY, "--precision", "bf16", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--precision bf16 is for GPUs" in result.stderr and "--precision fp32" in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_evaluate_names_labels_absent_from_the_truth_in_one_line(run_cli, trained: Path, tmp_path: Path):
    """Masks without GM: one line names the label and images, no MONAI/numpy warnings, n/a in the table."""
    frame = pd.read_csv(trained / "test_manifest.tsv", sep="\t")
    for i, path in enumerate(frame["dseg"]):
        image = nib.load(path)
        data = np.asarray(image.dataobj).copy()
        data[data == 2] = 0
        frame.loc[i, "dseg"] = str(tmp_path / f"nogm-{i}.nii.gz")
        nib.save(nib.Nifti1Image(data, image.affine, image.header), frame.loc[i, "dseg"])
    manifest = tmp_path / "no_gm.tsv"
    frame.to_csv(manifest, sep="\t", index=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("segment", "evaluate", "--model", trained, manifest, "--json")

    assert result.exit_code == 0, result.output
    shown = [w for w in caught if issubclass(w.category, UserWarning | RuntimeWarning)]
    assert not shown, [str(w.message) for w in shown]
    lines = [line for line in result.stderr.splitlines() if "absent from the truth" in line]
    assert len(lines) == 1 and "GM from 3 of 3 images" in flat(result.stderr)
    assert "UserWarning" not in result.stderr and "Mean of empty slice" not in result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["dice_GM"] is None or np.isnan(metrics["dice_GM"])
    assert 0 < metrics["dice_WM"] <= 1 and 0 <= metrics["dice"] <= 1


def test_predict_of_one_image_says_1_mask(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    image = sorted(cohort.parent.rglob("*_T1w.nii.gz"))[0]
    result = run_cli("segment", "predict", "--model", trained, image, "-o", tmp_path / "masks")
    assert result.exit_code == 0, result.output
    assert "1 mask written" in result.stderr and "1 masks" not in result.stderr
