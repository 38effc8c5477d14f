"""`neurodl classify` end to end on a tiny phantom cohort (non-RAS and anisotropic subjects included)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.data.phantom import generate_cohort
from neurodl.models import create_model, list_models

TINY = [
    "--model",
    "cnn",
    "--depth",
    "2",
    "--width",
    "4",
    "--size",
    "24",
    "--spacing",
    "1.5",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--quiet",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=12, size=24, seed=3)
    return root / "participants.tsv"


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "cnn"
    assert (
        main(
            [
                "classify",
                "train",
                str(cohort),
                "--image",
                "t1",
                "--label",
                "diagnosis",
                "--test-fraction",
                "0.25",
                "--out",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    return run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SLOW_CLASSIFIERS = {"resnet18", "resnet50"}  # seconds each on a CPU, even at 32^3


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(e.name, marks=pytest.mark.slow) if e.name in SLOW_CLASSIFIERS else e.name
        for e in list_models("classify")
    ],
)
def test_every_classifier_does_forward_and_backward_on_32_cubed(name):
    model = create_model("classify", name, in_channels=2, out_features=3)
    output = model(torch.randn(2, 2, 32, 32, 32))
    assert output.shape == (2, 3)
    output.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.gradcam_layer in dict(model.named_modules())


def test_train_writes_a_complete_run_with_recorded_preprocessing(trained: Path):
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "splits.json",
        "history.csv",
        "metrics.json",
        "learning_curves.png",
        "test_manifest.tsv",
        "test_predictions.csv",
        "validation_predictions.csv",
    ):
        assert (trained / name).is_file(), name
    prep = json.loads((trained / "preprocessing.json").read_text())
    assert prep["images"]["spacing"] == [1.5, 1.5, 1.5] and prep["images"]["size"] == [24, 24, 24]
    assert prep["image_columns"] == ["t1"] and prep["label"]["classes"] == ["CN", "AD"]
    splits = json.loads((trained / "splits.json").read_text())
    assert splits["test"] and not set(splits["test"]) & set(splits["training_participants"])
    assert "test" in json.loads((trained / "metrics.json").read_text())


def test_predict_reapplies_the_recorded_preprocessing(run_cli, trained: Path, tmp_path: Path):
    result = run_cli(
        "classify",
        "predict",
        "--model",
        trained,
        trained / "test_manifest.tsv",
        "-o",
        tmp_path / "preds.csv",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "preds.csv")
    during_training = pd.read_csv(trained / "test_predictions.csv")
    assert np.allclose(predicted["probability_AD"], during_training["probability_AD"], atol=1e-5)
    assert np.allclose(predicted[["probability_CN", "probability_AD"]].sum(axis=1), 1.0, atol=1e-5)


def test_prediction_is_the_same_for_ras_and_las_storage(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    source = nib.load(str(cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"))
    ras = nib.as_closest_canonical(source)
    data = np.asarray(ras.dataobj)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    las_affine = ras.affine @ flip  # voxel i -> world of voxel (n-1-i): the same brain, stored L-to-R
    nib.save(nib.Nifti1Image(data, ras.affine), str(tmp_path / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), las_affine), str(tmp_path / "las.nii.gz"))
    assert "".join(nib.aff2axcodes(las_affine)) == "LAS"
    result = run_cli(
        "classify", "predict", "--model", trained, tmp_path / "ras.nii.gz", tmp_path / "las.nii.gz", "--quiet"
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(__import__("io").StringIO(result.stdout))
    assert rows["probability_AD"].iloc[0] == pytest.approx(rows["probability_AD"].iloc[1], abs=1e-5)


def test_evaluate_held_out_and_refuse_training_participants(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    result = run_cli(
        "classify",
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
    metrics = json.loads(result.stdout)
    assert {
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "roc_auc",
        "confusion_matrix",
    } <= set(metrics)
    assert (tmp_path / "eval" / "metrics.json").is_file() and (
        tmp_path / "eval" / "confusion_matrix.png"
    ).is_file()
    refused = run_cli("classify", "evaluate", "--model", trained, cohort, "--quiet")
    assert refused.exit_code == 2
    assert "used to train or select the model" in refused.stderr and "--allow-overlap" in refused.stderr


@pytest.mark.parametrize("method", ["gradcam", "saliency", "occlusion"])
def test_interpretation_maps_are_in_the_input_grid(
    run_cli, trained: Path, cohort: Path, tmp_path: Path, method: str
):
    frame = pd.read_csv(cohort, sep="\t")
    inputs = []
    for path in frame["t1"]:
        image = nib.load(str(cohort.parent / path))
        if (
            "".join(nib.aff2axcodes(image.affine)) != "RAS"
            and len(set(np.round(image.header.get_zooms(), 3))) > 1
        ):
            inputs.append(cohort.parent / path)  # non-RAS and anisotropic
            break
    inputs.append(cohort.parent / frame["t1"].iloc[0])
    before = [digest(p) for p in inputs]
    result = run_cli(
        "classify",
        "interpret",
        "--model",
        trained,
        *inputs,
        "--method",
        method,
        "-o",
        tmp_path / "maps",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    for path in inputs:
        name = path.name.replace(".nii.gz", "")
        written = nib.load(str(tmp_path / "maps" / f"{name}_{method}.nii.gz"))
        source = nib.load(str(path))
        assert written.shape == source.shape
        assert np.allclose(written.affine, source.affine)
        assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
        assert np.isfinite(np.asarray(written.dataobj)).all()
        assert (tmp_path / "maps" / f"{name}_{method}.png").is_file()
    assert [digest(p) for p in inputs] == before


def test_bad_inputs_exit_2_with_a_message(run_cli, cohort: Path, tmp_path: Path):
    root = cohort.parent
    frame = pd.read_csv(cohort, sep="\t")

    one_class = frame.assign(diagnosis="CN")
    one_class.to_csv(root / "one_class.tsv", sep="\t", index=False)
    result = run_cli("classify", "train", root / "one_class.tsv", "--out", tmp_path / "a", *TINY)
    assert result.exit_code == 2 and "single class 'CN'" in result.stderr

    image4d = nib.load(str(root / frame["t1"].iloc[2]))
    stacked = np.stack([np.asarray(image4d.dataobj)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(stacked, image4d.affine), str(root / "four_d.nii.gz"))
    with_4d = frame.copy()
    with_4d.loc[2, "t1"] = "four_d.nii.gz"
    with_4d.to_csv(root / "with_4d.tsv", sep="\t", index=False)
    result = run_cli("classify", "train", root / "with_4d.tsv", "--out", tmp_path / "b", *TINY)
    assert result.exit_code == 2
    assert "four_d.nii.gz" in result.stderr and "4D" in result.stderr and "row 3" in result.stderr

    mixed = frame.copy()
    small = nib.load(str(root / frame["t2"].iloc[1]))
    nib.save(nib.Nifti1Image(np.asarray(small.dataobj)[:-2], small.affine), str(root / "cropped_T2w.nii.gz"))
    mixed.loc[1, "t2"] = "cropped_T2w.nii.gz"
    mixed.to_csv(root / "mixed.tsv", sep="\t", index=False)
    result = run_cli(
        "classify",
        "train",
        root / "mixed.tsv",
        "--image",
        "t1",
        "--image",
        "t2",
        "--out",
        tmp_path / "c",
        *TINY,
    )
    assert result.exit_code == 2
    assert "cropped_T2w.nii.gz" in result.stderr and "share a grid" in result.stderr

    result = run_cli("classify", "train", cohort, "--model", "vgg", "--out", tmp_path / "d", *TINY[2:])
    assert result.exit_code == 2 and "Unknown classify model 'vgg'" in result.stderr
    assert "Traceback" not in result.output


def test_model_directory_from_another_task_is_refused(run_cli, cohort: Path, tmp_path: Path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"x": np.arange(20.0), "y": ["a", "b"] * 10}).to_csv(table, index=False)
    assert (
        run_cli(
            "biomarkers",
            "train",
            table,
            "--target",
            "y",
            "--epochs",
            "1",
            "--out",
            tmp_path / "bio",
            "--quiet",
        ).exit_code
        == 0
    )
    result = run_cli(
        "classify", "predict", "--model", tmp_path / "bio", cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    )
    assert result.exit_code == 2
    assert "is a 'biomarkers' run, not a 'classify' run" in result.stderr


def test_batch_predict_continues_past_a_corrupt_file(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    good = cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"
    corrupt = tmp_path / "corrupt_T1w.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:200])
    result = run_cli(
        "classify", "predict", "--model", trained, good, corrupt, "-o", tmp_path / "preds.csv", "--quiet"
    )
    assert result.exit_code == 2
    assert "corrupt_T1w" in result.stderr and "1 of 2 inputs failed" in result.stderr
    assert len(pd.read_csv(tmp_path / "preds.csv")) == 1


def test_shards_partition_the_inputs_exactly(run_cli, trained: Path, tmp_path: Path):
    manifest = trained / "test_manifest.tsv"
    seen = []
    for i in (1, 2, 3):
        result = run_cli("classify", "predict", "--model", trained, manifest, "--shard", f"{i}/3", "--quiet")
        assert result.exit_code == 0, result.output
        seen += pd.read_csv(__import__("io").StringIO(result.stdout))["image"].tolist()
    everything = pd.read_csv(manifest, sep="\t")["t1"].tolist()
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))
    bad = run_cli("classify", "predict", "--model", trained, manifest, "--shard", "4/3")
    assert bad.exit_code == 2 and "--shard '4/3'" in bad.stderr
