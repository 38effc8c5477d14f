"""`neurodl autoencode` end to end on a tiny phantom cohort: latents, reconstructions in input space, anomaly maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.data.phantom import generate_cohort, make_phantom
from neurodl.models import create_model, list_models

# 24 mm phantoms at 1.5 mm in a 16^3 grid: tiny networks train in a few seconds on one thread.
TINY = ["--size", "16", "--spacing", "1.5", "--latent-dim", "4", "--width", "4", "--quiet"]


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


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AE trained through the `train-ae` alias, with held-out test participants."""
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "ae"
    code = main(
        [
            "train-ae",
            str(cohort),
            "--image",
            "t1",
            "--out",
            str(run),
            "--epochs",
            "20",
            "--test-fraction",
            "0.25",
        ]
        + TINY
    )
    assert code == 0
    return run


def test_train_ae_alias_writes_a_self_describing_run(trained: Path):
    for name in ("model.safetensors", "preprocessing.json", "splits.json", "history.csv", "latent_space.png"):
        assert (trained / name).is_file(), name
    prep = json.loads((trained / "preprocessing.json").read_text())
    assert prep["model"] == {
        "name": "ae",
        "dims": 3,
        "in_channels": 1,
        "latent_dim": 4,
        "width": 4,
        "size": [16] * 3,
    }
    assert prep["images"]["size"] == [16, 16, 16] and prep["images"]["resize"] is True
    assert prep["loss"] == "mse" and prep["image_columns"] == ["t1"]
    history = pd.read_csv(trained / "history.csv")
    assert "val_loss" in history.columns
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_encode_writes_one_row_per_image_usable_by_biomarkers(
    trained: Path, cohort: Path, tmp_path: Path, run_cli
):
    out = tmp_path / "latents.csv"
    result = run_cli("autoencode", "encode", "--model", trained, cohort, "-o", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    manifest = pd.read_csv(cohort, sep="\t")
    assert list(table["participant_id"]) == list(manifest["participant_id"])
    assert [c for c in table.columns if c.startswith("latent_")] == [f"latent_{k}" for k in range(1, 5)]
    assert {"diagnosis", "age"} <= set(table.columns)
    assert np.isfinite(table[[f"latent_{k}" for k in range(1, 5)]].to_numpy()).all()
    # Written in another folder than the manifest's: its image paths still resolve (absolute).
    for column in ("image", "t2", "dseg"):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in table[column]), column
    result = run_cli(
        "biomarkers", "train", out, "--target", "diagnosis", "--features", "latent_1,latent_2",
        "--epochs", "2", "--out", tmp_path / "bio", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def las_anisotropic_t1(folder: Path, seed: int = 11, lesion: bool = False) -> tuple[Path, np.ndarray]:
    """A phantom T1 stored LAS with 1 x 1 x 1.5 mm voxels and an offset origin; optionally a bright sphere."""
    phantom = make_phantom(np.random.default_rng(seed), size=24, spacing=(1.0, 1.0, 1.5), orientation="LAS")
    t1 = phantom.t1.astype(np.float32)
    sphere = np.zeros(t1.shape, dtype=bool)
    if lesion:
        brain = np.argwhere(phantom.labels == 3)
        centre = brain[len(brain) // 2]
        grid = np.indices(t1.shape)
        mm = (grid - centre[:, None, None, None]) * np.asarray([1.0, 1.0, 1.5])[:, None, None, None]
        sphere = (mm**2).sum(axis=0) <= 3.5**2
        t1[sphere] = 3 * t1.max()
    affine = phantom.affine.copy()
    affine[:3, 3] += [7.0, -3.0, 12.0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("lesion_T1w.nii.gz" if lesion else "las_T1w.nii.gz")
    nib.save(nib.Nifti1Image(t1, affine), str(path))
    return path, sphere


def test_reconstruct_keeps_grid_and_affine_of_a_las_anisotropic_input(trained: Path, tmp_path: Path, run_cli):
    image, _ = las_anisotropic_t1(tmp_path / "in")
    source = nib.load(str(image))
    assert nib.aff2axcodes(source.affine) == ("L", "A", "S")
    out = tmp_path / "out"
    result = run_cli("autoencode", "reconstruct", "--model", trained, image, "-o", out)
    assert result.exit_code == 0, result.output
    for suffix in ("recon", "error"):
        written = nib.load(str(out / f"las_T1w_{suffix}.nii.gz"))
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        assert np.isfinite(written.get_fdata()).all()
    assert (nib.load(str(out / "las_T1w_error.nii.gz")).get_fdata() >= 0).all()
    assert (out / "las_T1w_error.png").is_file()
    again = run_cli(
        "autoencode", "reconstruct", "--model", trained, image, tmp_path / "missing.nii.gz", "-o", out
    )
    assert again.exit_code == 2
    assert "missing" in again.output and "kept" in again.output


def test_anomaly_map_is_higher_inside_a_planted_lesion(trained: Path, tmp_path: Path, run_cli):
    image, sphere = las_anisotropic_t1(tmp_path / "in", seed=5, lesion=True)
    assert sphere.sum() > 20
    out = tmp_path / "out"
    assert run_cli("autoencode", "reconstruct", "--model", trained, image, "-o", out).exit_code == 0
    error = nib.load(str(out / "lesion_T1w_error.nii.gz")).get_fdata()
    head = nib.load(str(image)).get_fdata() > 0
    inside, outside = error[sphere].mean(), error[head & ~sphere].mean()
    print(f"mean anomaly score inside {inside:.2f}, outside {outside:.2f}")
    assert inside > 2 * outside, (inside, outside)


def test_evaluate_scores_held_out_images_inside_a_mask(trained: Path, cohort: Path, tmp_path: Path, run_cli):
    out = tmp_path / "eval"
    result = run_cli(
        "autoencode",
        "evaluate",
        "--model",
        trained,
        trained / "test_manifest.tsv",
        "--mask",
        "dseg",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == metrics["images"] == len(pd.read_csv(trained / "test_manifest.tsv", sep="\t"))
    assert {"mse", "mae", "psnr", "ssim"} <= set(per_image.columns)
    assert metrics["mse"] > 0 and np.isfinite(metrics["psnr"]) and -1 <= metrics["ssim"] <= 1
    leaked = run_cli("autoencode", "evaluate", "--model", trained, cohort)
    assert leaked.exit_code == 2 and "--allow-overlap" in leaked.output


@pytest.mark.slow
def test_vae_in_2d_trains_and_encodes_whole_volumes(cohort: Path, tmp_path: Path, run_cli):
    run = tmp_path / "vae2d"
    result = run_cli(
        "autoencode", "train", cohort, "--model", "vae", "--dims", "2", "--slices", "4", "--epochs", "2",
        "--out", run, *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "preprocessing.json").read_text())["model"]["dims"] == 2
    assert (run / "latent_space.png").is_file()
    out = tmp_path / "latents.csv"
    assert run_cli("autoencode", "encode", "--model", run, cohort, "-o", out).exit_code == 0
    assert pd.read_csv(out).shape[0] == 12
    image, _ = las_anisotropic_t1(tmp_path / "in")
    assert run_cli("autoencode", "reconstruct", "--model", run, image, "-o", tmp_path / "rec").exit_code == 0
    assert nib.load(str(tmp_path / "rec" / "las_T1w_recon.nii.gz")).shape == nib.load(str(image)).shape


def test_vae_loss_includes_the_kl_term():
    from neurodl.tasks.autoencode import AutoencodeModule

    torch.manual_seed(0)
    model = create_model(
        "autoencode", "vae", spatial_dims=3, in_channels=1, latent_dim=4, size=(16,) * 3, width=4
    )
    model.eval()  # the mean code: the same loss for the same batch
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        losses = [AutoencodeModule(model, loss="mse", beta=beta).losses(x) for beta in (0.0, 1.0, 10.0)]
    totals = [float(out["loss"].mean()) for out in losses]
    assert totals[0] < totals[1] < totals[2]
    kl = float(losses[1]["kl"].mean())
    assert kl > 0
    assert totals[1] == pytest.approx(totals[0] + kl, rel=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", [entry.name for entry in list_models("autoencode")])
def test_every_autoencoder_reconstructs_and_backpropagates(name: str, dims: int):
    model = create_model(
        "autoencode", name, spatial_dims=dims, in_channels=2, latent_dim=3, size=(16,) * dims, width=4
    )
    x = torch.randn(2, 2, *(16,) * dims)
    reconstruction, mu, _ = model(x)
    assert reconstruction.shape == x.shape and mu.shape == (2, 3)
    assert model.encode_mean(x).shape == (2, 3)
    ((reconstruction - x) ** 2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_inputs_exit_2_with_the_fix(cohort: Path, tmp_path: Path, run_cli):
    result = run_cli("train-ae", cohort, "--latent-dim", "0", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--latent-dim" in result.output
    result = run_cli("train-ae", cohort, "--size", "20", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "multiple of 8" in result.output and "--size 16" in result.output
    assert not (tmp_path / "b").exists()
    result = run_cli("train-ae", cohort, "--model", "gan", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "ae, vae" in result.output


def test_a_run_from_another_task_is_refused(cohort: Path, tmp_path: Path, run_cli):
    from neurodl.io.rundir import RunDirectory

    other = RunDirectory.create(tmp_path / "seg", task="segment", options={})
    for command in ("encode", "reconstruct"):
        result = run_cli(
            "autoencode", command, "--model", other.path, cohort, "-o", tmp_path / f"x_{command}"
        )
        assert result.exit_code == 2 and "'segment' run" in result.output
